"""``GET /stream`` through the fast door (`pushsvc.fastpath`) answers exactly as the Quart
route: the same request to one app (real redis-server), once with the door open and once
with it closed, gets the same status, headers and body bytes -- a fresh public stream, a
multi-channel one, resumes (header and query) with their replay, the reset of a garbled id,
over capacity, and every error.  A counter in front of Quart proves which door answered."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pushsvc.app import create_app
from pushsvc.config import Settings
from pushsvc.fastpath import FastPath
from tests.support.procs import RedisServer

pytestmark = pytest.mark.e2e

RETRY = re.compile(rb"retry: \d+")  # over capacity: a jittered hint


class CountingInner:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.inner(scope, receive, send)


async def get_stream(app: Any, query: bytes, headers: list[tuple[bytes, bytes]], until: bytes) -> tuple[
        int, list[tuple[bytes, bytes]], bytes]:
    """(status, sorted headers, body) of ``GET /stream?<query>`` as the server would send
    them; the client leaves once the body holds `until` (or the response ended)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/stream", "raw_path": b"/stream", "query_string": query, "root_path": "",
        "headers": [(b"host", b"test"), (b"x-request-id", b"diff-1"), *headers],
        "client": ("127.0.0.1", 4000), "server": ("test", 80), "extensions": {},
    }
    requested = False
    leave = asyncio.Event()
    status = 0
    start_headers: list[tuple[bytes, bytes]] = []
    body = bytearray()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, start_headers
        if message["type"] == "http.response.start":
            status, start_headers = message["status"], [(k.lower(), v) for k, v in message["headers"]]
        else:
            body.extend(message.get("body", b""))
            if until in body or not message.get("more_body", False):
                leave.set()

    await asyncio.wait_for(app(scope, receive, send), 10)
    return status, sorted(start_headers), bytes(body)


@pytest.fixture
async def doors(redis_server: RedisServer) -> AsyncIterator[tuple[Any, FastPath, CountingInner]]:
    app = create_app(Settings(redis_url=redis_server.url, max_channels_per_stream=3, max_streams=50))
    fast = app.extensions["pushsvc.fastpath"]
    counter = fast.inner = CountingInner(fast.inner)
    async with app.test_app():
        yield app, fast, counter


def cases(channel: str, first_id: str) -> dict[str, tuple[bytes, list[tuple[bytes, bytes]], bytes]]:
    """name -> (query, headers, what the body must hold before the client leaves)."""
    c = channel.encode()
    return {
        "public": (b"channel=" + c, [], b"id: "),
        "default channel": (b"", [], b"id: "),
        "multi-channel, any order": (b"channel=" + c + b"x&channel=" + c, [], b"id: "),
        "resume, Last-Event-ID": (b"channel=" + c, [(b"last-event-id", first_id.encode())], b"data: second"),
        "resume, lastEventId": (b"channel=" + c + b"&lastEventId=" + first_id.encode(), [], b"data: second"),
        "resume, header wins": (b"channel=" + c + b"&lastEventId=garbled",
                                [(b"last-event-id", first_id.encode())], b"data: second"),
        "garbled id: reset": (b"channel=" + c, [(b"last-event-id", b"not-an-id")], b"pushsvc.reset"),
        "400 bad channel": (b"channel=a%20b", [], b"\n"),
        "400 empty channel": (b"channel=", [], b"\n"),
        "400 invalid UTF-8 stays percent-encoded": (b"channel=%ff", [], b"\n"),
        "400 too many channels": (b"channel=a&channel=b&channel=c&channel=d", [], b"\n"),
    }


async def test_every_stream_answer_of_the_fast_door_is_the_quart_routes(doors):
    app, fast, counter = doors
    rt = app.extensions["pushsvc"]
    channel = f"sd-{uuid.uuid4().hex[:12]}"
    from pushsvc.events import Event

    published = await rt.broker.publish(
        [Event(channels=(channel,), data="first"), Event(channels=(channel,), data="second")]
    )
    ids = published.ids
    first_id = ids[0][0]
    for name, (query, headers, until) in cases(channel, first_id).items():
        fast.enabled = True
        through_fast = await get_stream(app, query, headers, until)
        assert counter.paths == [], f"{name}: the fast door handed it to Quart"
        fast.enabled = False
        through_quart = await get_stream(app, query, headers, until)
        assert counter.paths == ["/stream"], name
        counter.paths.clear()
        assert through_fast == through_quart, name
        status = int(name.split()[0]) if name[0].isdigit() else 200
        assert through_fast[0] == status, name


async def test_a_query_that_is_not_utf8_is_a_json_400_whichever_door_would_take_it(doors):
    """Quart's URL matching decodes the query unguarded (a crash, a bare 500): the fast door
    answers for it, on any path."""
    app, fast, counter = doors
    answers = []
    for enabled in (True, False):
        fast.enabled = enabled
        answers.append(await get_stream(app, b"channel=\xff", [], b"\n"))
    assert answers[0] == answers[1] and counter.paths == []
    status, headers, body = answers[0]
    assert status == 400 and (b"content-type", b"application/json") in headers
    assert body == b'{"detail":"the query string is not UTF-8","error":"invalid_query"}\n'


async def test_over_capacity_is_the_same_answer_through_both_doors(doors):
    app, fast, _ = doors
    app.extensions["pushsvc"].hub.draining = True
    answers = []
    for enabled in (True, False):
        fast.enabled = enabled
        status, headers, body = await get_stream(app, b"channel=full", [], b"\n\n")
        answers.append((status, headers, RETRY.sub(b"retry: N", body)))
    assert answers[0] == answers[1]
    assert answers[0][0] == 200 and answers[0][2] == b": over capacity, retry later\nretry: N\n\n"
