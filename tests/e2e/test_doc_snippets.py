"""Every shell, Python and JavaScript block of README.md and docs/*.md runs against a real
pushsvc (and, for JavaScript, in headless Chromium), so a broken example fails CI.

A block that cannot run here carries ``<!-- not run: reason -->`` just before it; see
tests/support/snippets.py for the markers and how addresses are rewritten.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import ROOT, RedisServer, Service, require_binary
from tests.support.snippets import Snippet, collect, localise

pytestmark = pytest.mark.e2e

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SNIPPETS = collect(DOCS)
RUN = [s for s in SNIPPETS if s.skip_reason is None]
SNIPPET_TIMEOUT_SECONDS = 60
BASE_ENV = {"PUSHSVC_PUBLISH_TOKENS": "dev-token", "PUSHSVC_KEEPALIVE_SECONDS": "1"}


class Services:
    """One pushsvc per distinct ``run with:`` environment, started on first use."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.started: dict[tuple[tuple[str, str], ...], Service] = {}

    def get(self, env: dict[str, str]) -> Service:
        key = tuple(sorted(env.items()))
        if key not in self.started:
            full = {**BASE_ENV, "PUSHSVC_REDIS_URL": self.redis_url, **env}
            self.started[key] = Service(full).start()
        return self.started[key]

    def stop(self) -> None:
        for service in self.started.values():
            service.stop()


@pytest.fixture(scope="module")
def doc_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def services(doc_redis: RedisServer) -> Iterator[Services]:
    pool = Services(doc_redis.url)
    yield pool
    pool.stop()


def _shell_env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHSVC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PUSHSVC_REDIS_URL"] = redis_url
    return env


def _run_process(snippet: Snippet, code: str, redis_url: str, tmp_path: Path) -> None:
    if snippet.kind == "sh":
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        command = [sys.executable, "-c", code]
    result = subprocess.run(
        command, cwd=tmp_path, env=_shell_env(redis_url), capture_output=True, text=True,
        timeout=SNIPPET_TIMEOUT_SECONDS, check=False,
    )
    assert result.returncode == 0, (
        f"{snippet.where} exited {result.returncode}\n--- code\n{code}\n--- stdout\n{result.stdout[-2000:]}"
        f"\n--- stderr\n{result.stderr[-2000:]}"
    )


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium for every JavaScript block (a new page each)."""
    require_binary("chromium")
    if os.environ.get("CI") == "true":
        import playwright.sync_api as sync_api
    else:
        sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield browser
        finally:
            browser.close()


def _run_js(snippet: Snippet, code: str, service: Service, browser: Any) -> None:
    imports = [line for line in code.splitlines() if line.startswith("import ")]
    body = [line for line in code.splitlines() if not line.startswith("import ")]
    module = "\n".join([*imports, *body, "window.__snippetDone = true;"])
    errors: list[str] = []
    page = browser.new_page()
    try:
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(service.base + "/healthz")  # same origin, and no page script of its own
        page.add_script_tag(content=module, type="module")
        with contextlib.suppress(Exception):  # a timeout: reported below with the page's errors
            page.wait_for_function("() => window.__snippetDone === true", timeout=15_000)
        done = page.evaluate("() => window.__snippetDone === true")
    finally:
        page.close()
    assert done and not errors, f"{snippet.where} failed in Chromium: {errors}\n--- code\n{module}"


@pytest.mark.parametrize("snippet", RUN, ids=[s.where for s in RUN])
def test_doc_snippet_runs(
    snippet: Snippet, services: Services, doc_redis: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    service = services.get(snippet.env)
    code = localise(snippet.code, service.port, doc_redis.port)
    if snippet.kind == "js":
        _run_js(snippet, code, service, request.getfixturevalue("chromium"))
    else:
        _run_process(snippet, code, doc_redis.url, tmp_path)


def test_every_runnable_block_is_run_or_says_why_not() -> None:
    skipped = [s for s in SNIPPETS if s.skip_reason is not None]
    assert RUN, "no runnable snippet found in README.md and docs/"
    assert all(s.skip_reason.strip() for s in skipped)
    print(f"doc snippets: {len(RUN)} run, {len(skipped)} marked not run")
