"""In headless Chromium (Debian's `chromium`, driven by Playwright): a page from a second
origin subscribes to a private channel with `EventSource(url, {withCredentials: true})`
and the token cookie, and receives events; a page from an origin not in
PUSHSVC_CORS_ORIGINS cannot read the stream; without the cookie the stream is refused."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

import pytest

from tests.support import jwts
from tests.support.helpers import TOKEN, publish
from tests.support.procs import Service, free_port, require_binary

pytestmark = pytest.mark.e2e

PAGE = b"""<!doctype html>
<html><body><script>
window.received = []; window.errors = 0; window.opened = false; window.state = -1;
const url = new URLSearchParams(location.search).get("stream");
const source = new EventSource(url, {withCredentials: true});
source.onopen = () => { window.opened = true; };
source.onerror = () => { window.errors += 1; window.state = source.readyState; };
source.addEventListener("note", (e) => window.received.push(e.data));
</script></body></html>
"""


class _PageHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page_origins() -> Iterator[tuple[str, str]]:
    """Two tiny static servers on other loopback ports: (allowed origin, foreign origin)."""
    servers = [ThreadingHTTPServer(("127.0.0.1", free_port()), _PageHandler) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
               for s in servers]
    for thread in threads:
        thread.start()
    try:
        allowed, foreign = (f"http://127.0.0.1:{s.server_address[1]}" for s in servers)
        yield allowed, foreign
    finally:
        for server, thread in zip(servers, threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join(5)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    executable = require_binary("chromium")
    if os.environ.get("CI") == "true":
        import playwright.async_api as async_api  # under CI a missing Playwright fails, never skips
    else:
        async_api = pytest.importorskip("playwright.async_api")
    async with async_api.async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=executable,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield instance
        finally:
            await instance.close()


async def open_page(browser: Any, origin: str, stream_url: str, cookie: tuple[str, str] | None) -> Any:
    context = await browser.new_context()
    if cookie is not None:
        service_base, token = cookie
        await context.add_cookies([{"name": "pushsvc_token", "value": token, "url": service_base}])
    page = await context.new_page()
    await page.goto(f"{origin}/?stream={quote(stream_url, safe='')}", timeout=10_000)
    return page


async def test_page_on_another_origin_reads_a_private_stream_with_a_cookie_and_others_cannot(
    service_factory, page_origins, browser, http
):
    allowed_origin, foreign_origin = page_origins
    service: Service = service_factory({
        "PUSHSVC_PUBLISH_TOKENS": TOKEN, "PUSHSVC_PRIVATE_CHANNELS": "user:*",
        "PUSHSVC_JWT_SECRET": jwts.SECRET, "PUSHSVC_JWT_AUDIENCE": jwts.AUDIENCE,
        "PUSHSVC_CORS_ORIGINS": allowed_origin,
    })
    # Published before any page connects; `lastEventId=0` replays the channel from its start,
    # so "the page received it" does not race the stream's subscription.
    assert (await publish(http, service, {"channel": "user:42", "type": "note", "data": "first"})).status_code == 202
    stream_url = f"{service.base}/stream?channel=user:42&lastEventId=0"
    cookie = (service.base, jwts.hs256(["user:42"]))

    page = await open_page(browser, allowed_origin, stream_url, cookie)
    await page.wait_for_function("window.received.length >= 1", timeout=10_000)
    assert await page.evaluate("window.received") == ["first"]
    assert (await publish(http, service, {"channel": "user:42", "type": "note", "data": "live"})).status_code == 202
    await page.wait_for_function("window.received.length >= 2", timeout=10_000)
    assert await page.evaluate("[window.received, window.opened, source.readyState]") == [["first", "live"], True, 1]

    # A foreign origin with the same cookie: the browser refuses it the response (no CORS grant).
    foreign = await open_page(browser, foreign_origin, stream_url, cookie)
    await foreign.wait_for_function("window.state === 2", timeout=10_000)  # EventSource.CLOSED
    assert await foreign.evaluate("[window.received, window.opened]") == [[], False]

    # The allowed origin without the cookie: 401, the EventSource gives up, nothing read.
    anonymous = await open_page(browser, allowed_origin, stream_url, None)
    await anonymous.wait_for_function("window.state === 2", timeout=10_000)
    assert await anonymous.evaluate("[window.received, window.opened]") == [[], False]
    assert await page.evaluate("window.received") == ["first", "live"]
