"""The admin page at /admin in headless Chromium, on two pushsvc instances sharing one
Redis: without a credential it shows a token field and nothing else (a wrong token sees
nothing either); with one it lists live channels with subscriber counts across both
instances, events/s, a channel's last events, publishes a test event and shows the
effective settings with secrets hidden.  The admin API itself: only a static publish
token or a publisher JWT for `*` opens it, also when anonymous publishing is on.  And
neither page has a 404 in the browser console (favicon)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from tests.e2e.test_browser import browser_page  # noqa: F401  (the Chromium fixture)
from tests.support.helpers import TOKEN
from tests.support.jwts import AUDIENCE, SECRET, hs256
from tests.support.procs import Service
from tests.support.sse_client import SSEClient

pytestmark = [pytest.mark.e2e]

ADMIN_PATHS = ["/admin/api/overview", "/admin/api/settings", "/admin/api/tail?channel=news"]


def visible_text(page: Any) -> str:
    return str(page.evaluate("document.body.innerText"))


def data_cells(page: Any) -> int:
    return int(page.evaluate("document.querySelectorAll('#channels td, #tail td, #settings td').length"))


def shows_only_the_token_field(page: Any) -> None:
    assert page.is_visible("#token") and page.is_hidden("#panel")
    assert data_cells(page) == 0
    text = visible_text(page)
    assert "news" not in text and "PUSHSVC_" not in text and "events/s" not in text, text


def log_in(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.click("#use-token")


class Listeners:
    """Three streams on channel news (1 on `a`, 2 on `b`) read in a thread of their own
    while the browser (sync Playwright) runs in the test's thread."""

    def __init__(self, a: Service, b: Service) -> None:
        self.ports = [a.port, b.port, b.port]
        self.open = threading.Event()
        self.received: list[Any] = []
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except Exception as exc:  # reported by the test, not as an unhandled thread exception
            self.errors.append(exc)

    async def _run(self) -> None:
        streams = [await SSEClient.open(port, ["news"]) for port in self.ports]
        try:
            for stream in streams:
                await stream.wait_open()
            self.open.set()
            self.received.append(await streams[1].next_event(timeout=60))  # the page's test event
        finally:
            for stream in streams:
                await stream.close()


@pytest.mark.browser
def test_admin_page_shows_live_data_only_with_a_publish_token(browser_page, service_factory,  # noqa: F811
                                                              redis_url):
    env = {"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_JWT_SECRET": SECRET, "PUSHSVC_JWT_AUDIENCE": AUDIENCE}
    a, b = service_factory(env), service_factory(env)
    listeners = Listeners(a, b)
    listeners.thread.start()
    assert listeners.open.wait(20)
    check_admin_page(browser_page, a)
    listeners.thread.join(20)
    assert not listeners.errors, listeners.errors
    assert [(e.type, e.data) for e in listeners.received] == [("admin-test", '{"hello":"from admin"}')]


def check_admin_page(page: Any, service: Service) -> None:
    page.goto(service.base + "/admin")
    shows_only_the_token_field(page)

    log_in(page, "wrong-token")
    page.wait_for_function("document.getElementById('login-error').textContent !== ''")
    shows_only_the_token_field(page)
    assert page.evaluate("sessionStorage.length") == 0

    log_in(page, TOKEN)
    # 3 streams on channel news: 1 on this instance, 2 on the other one.
    page.wait_for_function("""() => Array.from(document.querySelectorAll('#channels tr')).some(
        r => r.cells[0].textContent === 'news' && r.cells[1].textContent === '3')""")
    page.wait_for_function("document.getElementById('summary').textContent.includes('events/s')")
    assert page.evaluate("sessionStorage.getItem('pushsvc.admin.token')") == TOKEN

    settings = dict(page.eval_on_selector_all(
        "#settings tr", "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])"))
    assert settings["PUSHSVC_PUBLISH_TOKENS"] == "[hidden]"
    assert settings["PUSHSVC_JWT_SECRET"] == "[hidden]"
    assert settings["PUSHSVC_KEEPALIVE_SECONDS"] == "15"
    assert TOKEN not in visible_text(page) and SECRET not in visible_text(page)

    page.fill("#publish-channel", "news")
    page.fill("#publish-type", "admin-test")
    page.fill("#publish-data", '{"hello": "from admin"}')
    page.click("#publish-form button")
    page.wait_for_function("document.getElementById('publish-result').textContent.startsWith('published')")

    page.click("#channels tr >> text=news")
    page.wait_for_function("""() => Array.from(document.querySelectorAll('#tail tr')).some(
        r => r.cells[1].textContent === 'admin-test' && r.cells[2].textContent === '{"hello":"from admin"}')""")

    page.reload()  # the token is kept for the tab
    page.wait_for_function("document.getElementById('summary').textContent.includes('open streams')")
    assert page.is_hidden("#login")

    page.click("#forget")
    shows_only_the_token_field(page)


async def test_admin_api_needs_a_token_or_a_jwt_for_every_channel(service_factory):
    service = service_factory({"PUSHSVC_JWT_SECRET": SECRET, "PUSHSVC_JWT_AUDIENCE": AUDIENCE,
                               "PUSHSVC_ALLOW_ANONYMOUS_PUBLISH": "true"})
    async with httpx.AsyncClient(base_url=service.base, timeout=10) as http:
        for path in ADMIN_PATHS:
            for headers, status in [
                ({}, 401),  # anonymous publishing does not open the admin API
                ({"Authorization": "Bearer wrong"}, 401),
                ({"Authorization": f"Bearer {hs256(publish=['news'])}"}, 403),
                ({"Authorization": f"Bearer {hs256(subscribe=['*'])}"}, 403),
                ({"Authorization": f"Bearer {TOKEN}"}, 200),
                ({"Authorization": f"Bearer {hs256(publish=['*'])}"}, 200),
            ]:
                response = await http.get(path, headers=headers)
                assert response.status_code == status, (path, headers, response.text)
                if status != 200:
                    assert set(response.json()) == {"error", "detail"}
        page = await http.get("/admin")
        assert page.status_code == 200 and "PUSHSVC_" not in page.text


async def test_admin_tail_rejects_bad_input_with_400(service_factory):
    service = service_factory()
    async with httpx.AsyncClient(base_url=service.base, timeout=10,
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        for query in ["channel=bad%20name", "", "channel=news&limit=0", "channel=news&limit=101",
                      "channel=news&limit=x"]:
            response = await http.get("/admin/api/tail?" + query)
            assert response.status_code == 400, (query, response.text)
        response = await http.get("/admin/api/tail?channel=empty")
        assert response.status_code == 200 and response.json()["events"] == []


@pytest.mark.browser
@pytest.mark.parametrize("path", ["/", "/admin"])
def test_pages_have_no_404_in_the_console(browser_page, service_factory, path):  # noqa: F811
    page = browser_page
    service = service_factory()
    failures: list[str] = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("console", lambda m: failures.append(m.text) if m.type == "error" else None)
    page.goto(service.base + path)
    page.wait_for_load_state("networkidle")
    assert failures == []
