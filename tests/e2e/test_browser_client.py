"""pushsvc.js in headless Chromium (Debian's package, driven by Playwright) against a real
`pushsvc serve` and a real Redis: a page reloaded while events are published shows every
event exactly once across the reloads; a token that expires is refreshed through
getToken() with no loss; behind nginx, the service stopped (nginx answers 502) and started
again is reconnected by the client by itself."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pushsvc.publisher import Publisher
from tests.e2e.test_browser import browser_page  # noqa: F401  (the fixture)
from tests.support import jwts
from tests.support.nginx import Nginx
from tests.support.procs import Service

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.redis]

PAGE_PATH = "/__client-test"


def page_html(channel: str, with_token: bool) -> str:
    # What the page sees is appended to localStorage synchronously, in the listener, so a
    # reload can lose nothing of it (a call out to Python may be dropped by the navigation).
    get_token = "getToken: () => window.mintToken()," if with_token else ""
    return f"""<!doctype html><meta charset="utf-8"><title>pushsvc.js test</title>
<script type="module">
  import {{ PushStream }} from "/pushsvc.js";
  const add = (key, value) =>
    localStorage.setItem(key, JSON.stringify([...JSON.parse(localStorage.getItem(key) || "[]"), value]));
  const stream = new PushStream("/stream", {{
    channels: [{channel!r}], {get_token} rewind: 1000, minDelay: 200, maxDelay: 1000 }});
  stream.on("n", (data, event) => add("seen", data.v));
  stream.onopen = () => add("opens", 1);
  stream.onreset = (data) => add("seen", data);
</script>"""


class Recorder:
    """What the page saw, across reloads (kept in the page's localStorage)."""

    def __init__(self, page: Any, base: str, channel: str, with_token: bool = False) -> None:
        self.page = page
        self.tokens = 0
        page.expose_function("mintToken", self._mint)
        html = page_html(channel, with_token)
        page.route(base + PAGE_PATH, lambda route: route.fulfill(body=html, content_type="text/html"))

    def _mint(self) -> str:
        self.tokens += 1
        return jwts.hs256(["user:42"], ttl=2)

    def _list(self, key: str) -> list[Any]:
        try:
            found: list[Any] = self.page.evaluate(f"JSON.parse(localStorage.getItem('{key}') || '[]')")
        except Exception:  # the page is navigating: ask again
            return []
        return found

    @property
    def values(self) -> list[Any]:
        return self._list("seen")

    @property
    def opens(self) -> int:
        return len(self._list("opens"))

    def count(self) -> int:
        return len(self.values)


def pump_until(page: Any, predicate: Any, timeout: float, what: str) -> None:
    """wait_until that lets Playwright serve the page's calls into Python meanwhile (the
    sync API only dispatches them inside its own calls)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        page.wait_for_timeout(50)


class Drip:
    """Publishes 1..count to a channel from a thread, one every `interval` seconds."""

    def __init__(self, redis_url: str, channel: str, count: int, interval: float) -> None:
        self.publisher = Publisher(redis_url)
        self.thread = threading.Thread(target=self._run, args=(channel, count, interval), daemon=True)

    def _run(self, channel: str, count: int, interval: float) -> None:
        for value in range(1, count + 1):
            self.publisher.publish(channel, {"v": value}, type="n")
            time.sleep(interval)

    def __enter__(self) -> Drip:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.join(30)
        self.publisher.close()


@pytest.fixture
def redis_service(redis_url: str) -> Iterator[Service]:
    service = Service({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_RETRY_MS": "300"})
    try:
        yield service.start()
    finally:
        service.stop()


def test_a_page_reloaded_while_events_are_published_shows_each_event_exactly_once(
    browser_page, redis_service, redis_url  # noqa: F811
):
    page = browser_page
    recorder = Recorder(page, redis_service.base, "feed")
    page.goto(redis_service.base + PAGE_PATH)
    pump_until(page, lambda: recorder.opens >= 1, 10, what="the stream to open")
    total = 150
    with Drip(redis_url, "feed", total, 0.02):
        for reloads in range(1, 4):
            seen = recorder.count()
            pump_until(page, lambda s=seen: recorder.count() > s + 5, 10, what="events before the reload")
            page.reload()
            pump_until(page, lambda r=reloads: recorder.opens > r, 10, what="the reloaded page's stream")
    pump_until(page, lambda: recorder.count() >= total, 10, what=f"every event (seen {recorder.values})")
    page.wait_for_timeout(300)  # none may come twice: give a duplicate the time to arrive
    assert recorder.values == list(range(1, total + 1))
    assert recorder.opens == 4


def test_an_expiring_token_is_refreshed_through_get_token_without_loss(browser_page, service_factory, redis_url):  # noqa: F811
    service = service_factory({
        "PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_PRIVATE_CHANNELS": "user:*", "PUSHSVC_JWT_SECRET": jwts.SECRET,
        "PUSHSVC_JWT_AUDIENCE": jwts.AUDIENCE, "PUSHSVC_JWT_LEEWAY_SECONDS": "0", "PUSHSVC_RETRY_MS": "300"})
    page = browser_page
    recorder = Recorder(page, service.base, "user:42", with_token=True)
    page.goto(service.base + PAGE_PATH)
    pump_until(page, lambda: recorder.opens >= 1, 10, what="the stream to open")
    total = 120
    with Drip(redis_url, "user:42", total, 0.05) as drip:  # 6 s: tokens of 1-2 s expire several times
        pump_until(page, lambda: not drip.thread.is_alive(), 30, what="the publisher")
    pump_until(page, lambda: recorder.count() >= total, 15, what="every event")
    page.wait_for_timeout(300)
    assert recorder.values == list(range(1, total + 1))
    assert recorder.tokens >= 3  # refreshed through getToken(), not given up
    assert "token_expired" in service.log()
    assert "status=401" not in service.log()  # refreshed on the expiry event, not after a refusal


def test_behind_nginx_a_stopped_and_restarted_service_is_reconnected_by_the_client(
    browser_page, redis_url  # noqa: F811
):
    env = {"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_RETRY_MS": "300", "PUSHSVC_TRUSTED_PROXIES": "127.0.0.1"}
    service = Service(env).start()
    nginx = Nginx([service.port]).start()
    try:
        page = browser_page
        recorder = Recorder(page, nginx.base, "feed")
        page.goto(nginx.base + PAGE_PATH)
        pump_until(page, lambda: recorder.opens >= 1, 10, what="the stream to open")
        publisher = Publisher(redis_url)
        try:
            publisher.publish("feed", {"v": 1}, type="n")
            pump_until(page, lambda: recorder.count() == 1, 10, what="the first event")
            assert service.stop() == 0
            pump_until(page, lambda: " 502 " in (nginx.dir / "access.log").read_text(), 10,
                       what="nginx to answer the client's reconnect with 502")
            publisher.publish("feed", {"v": 2}, type="n")  # while the service is down
            page.wait_for_timeout(2000)  # down for a few seconds: several refused reconnects
            service = Service(env, port=service.port).start()
            publisher.publish("feed", {"v": 3}, type="n")
            pump_until(page, lambda: recorder.count() >= 3, 15, what="the client to come back by itself")
        finally:
            publisher.close()
        page.wait_for_timeout(300)
        assert recorder.values == [1, 2, 3]
        assert recorder.opens == 2
    finally:
        nginx.stop()
        service.stop()
