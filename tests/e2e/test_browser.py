"""The original write-up's scenario in a real browser: headless Chromium (Debian's package)
driven by Playwright, the demo page open on a real pushsvc with a real Redis.

Events published by POST /publish, by `pushsvc.publisher` and by a raw Redis PUBLISH each
update `#data`; the service is restarted while the page is open, and the browser comes
back by itself and shows the events published meanwhile, none twice.  A screenshot is
saved to artifacts/ for a person to look at."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from pushsvc.publisher import Publisher
from tests.support.helpers import TOKEN, flask_sse_message
from tests.support.procs import ROOT, Service, require_binary

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"
WAIT_MS = 10_000


@pytest.fixture
def browser_page() -> Iterator[Any]:
    require_binary("chromium")
    if os.environ.get("CI") == "true":
        import playwright.sync_api as sync_api  # under CI a missing Playwright is a failure
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            browser.close()


def question(value: str) -> dict[str, str]:
    return {"question": "which programming is the best?", "value": value}


def wait_for_data(page: Any, value: str) -> None:
    expected = f"which programming is the best? : {value}"
    page.wait_for_function("t => document.getElementById('data').textContent === t", arg=expected)


def log_rows(page: Any) -> list[dict[str, str]]:
    rows = page.eval_on_selector_all(
        "#log tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent))")
    return [{"type": r[1], "id": r[2], "data": r[3]} for r in reversed(rows)]  # oldest first


def test_demo_page_gets_all_three_publish_paths_and_resumes_after_a_restart(
    browser_page, redis_url, redis_server
):
    page = browser_page
    env = {"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_PUBLISH_TOKENS": TOKEN, "PUSHSVC_RETRY_MS": "300"}
    service = Service(env).start()
    port = service.port
    try:
        page.goto(service.base + "/")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('connected')")

        response = httpx.post(service.base + "/publish", headers={"Authorization": f"Bearer {TOKEN}"},
                              json={"channel": "sse", "type": "new_answers", "data": question("PHP")})
        assert response.status_code == 202, response.text
        wait_for_data(page, "PHP")

        publisher = Publisher(redis_url)
        try:
            publisher.publish("sse", question("Python"), type="new_answers")
            wait_for_data(page, "Python")

            with redis.Redis.from_url(redis_url) as raw:
                assert raw.publish("sse", flask_sse_message(question("Go"), "new_answers")) == 1
            wait_for_data(page, "Go")

            # Restart: stop the service, publish while it is down, start it again.
            assert service.stop() == 0
            page.wait_for_function("document.getElementById('status').textContent.startsWith('disconnected')")
            for value in ("down-1", "down-2", "down-3"):
                publisher.publish("sse", question(value), type="new_answers")
            service = Service(env, port=port).start()
            wait_for_data(page, "down-3")
            publisher.publish("sse", question("after"), type="new_answers")
            wait_for_data(page, "after")
        finally:
            publisher.close()

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-page.png"), full_page=True)

        rows = log_rows(page)
        values = [json.loads(row["data"])["value"] for row in rows]
        assert values == ["PHP", "Python", "Go", "down-1", "down-2", "down-3", "after"], rows
        assert all(row["type"] == "new_answers" for row in rows), rows
        ids = [row["id"] for row in rows]
        assert ids[2] == ids[1]  # the raw PUBLISH carries no id: the last id stays
        with_ids = ids[:2] + ids[3:]
        assert len(set(with_ids)) == len(with_ids), ids  # none twice
        assert [int(i.rsplit("-", 1)[1]) for i in with_ids] == [1, 2, 3, 4, 5, 6], ids
    finally:
        service.stop()
    assert Path(ARTIFACTS / "demo-page.png").stat().st_size > 0
