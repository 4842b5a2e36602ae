"""What `GET /stream` hands the server, message by message, as `pushsvc serve` serves it
(embedded broker): a stream opens with one body write that holds its position, and live
events go out as they are, ids included, through the hot path."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pushsvc.app import create_app
from pushsvc.broker.memory import MemoryBroker
from pushsvc.config import Settings
from pushsvc.events import Event
from pushsvc.hub import Hub
from pushsvc.metrics import Metrics
from pushsvc.resume import Position
from pushsvc.server import asgi_app
from pushsvc.session import StreamSession

TOKEN = "unit-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def stream_scope(query: bytes) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/stream", "query_string": query, "http_version": "1.1",
            "scheme": "http", "headers": [(b"host", b"test")], "client": ("127.0.0.1", 5000)}


class Recorder:
    """The server's side of one stream: what was sent, and a disconnect on demand."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.changed = asyncio.Condition()
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            async with self.changed:
                self.bodies.append(bytes(message["body"]))
                self.changed.notify_all()

    async def until(self, predicate: Any) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: predicate(self)), 5)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Any, Any, Any]]:
    """(the Quart app, the ASGI callable `pushsvc serve` serves, a test client)."""
    app = create_app(Settings(publish_tokens=(TOKEN,)))
    callable_ = asgi_app(app)
    async with app.test_app() as test_app:
        yield app, callable_, test_app.test_client()


async def test_a_stream_opens_with_one_write_holding_its_position_and_then_sends_live_events(served):
    app, served_app, client = served
    assert (await client.post("/publish", json={"channel": "news", "data": "before"}, headers=AUTH)).status_code == 202
    rec = Recorder()
    task = asyncio.create_task(served_app(stream_scope(b"channel=news"), rec.receive, rec.send))
    try:
        await rec.until(lambda r: len(r.bodies) >= 1)
        opening = rec.bodies[0]
        assert opening.startswith(b": pushsvc stream open\n")
        assert b"retry: " in opening
        position = re.search(rb"\nid: (\w{8}-1)\n", opening)
        assert position is not None, opening  # the position came with the opening, in the same write

        events = [{"channel": "news", "data": f"e{i}"} for i in range(2, 6)]
        assert (await client.post("/publish", json=events, headers=AUTH)).status_code == 202
        epoch = position.group(1).split(b"-")[0]
        await rec.until(lambda r: b"data: e5" in b"".join(r.bodies))
        live = b"".join(rec.bodies[1:])
        expected = b"".join(b"id: %s-%d\ndata: e%d\n\n" % (epoch, i, i) for i in range(2, 6))
        assert live == expected
    finally:
        rec.gone.set()
        await asyncio.wait_for(task, 5)
    runtime = app.extensions["pushsvc"]
    assert runtime.metrics.events_delivered == 4
    assert runtime.hub.stream_count == 0


async def test_a_gap_leaves_the_hot_path_and_is_replayed_in_order(served):
    app, served_app, client = served
    assert (await client.post("/publish", json={"channel": "news", "data": "e1"}, headers=AUTH)).status_code == 202
    rec = Recorder()
    task = asyncio.create_task(served_app(stream_scope(b"channel=news"), rec.receive, rec.send))
    try:
        await rec.until(lambda r: b"\nid: " in b"".join(r.bodies))
        hub = app.extensions["pushsvc"].hub
        # Events 2 and 3 are stored but never reach the hub (as if pub/sub lost them)...
        original = hub.on_message
        hub.on_message = lambda channel, payload, trusted=True: None
        try:
            assert (await client.post("/publish", json=[{"channel": "news", "data": "e2"},
                                                        {"channel": "news", "data": "e3"}], headers=AUTH)
                    ).status_code == 202
        finally:
            hub.on_message = original
        # ...so event 4 arrives after a gap: the stream reads 2 and 3 from history first.
        assert (await client.post("/publish", json={"channel": "news", "data": "e4"}, headers=AUTH)
                ).status_code == 202
        await rec.until(lambda r: b"data: e4" in b"".join(r.bodies))
        body = b"".join(rec.bodies)
        assert re.findall(rb"data: (e\d)", body) == [b"e2", b"e3", b"e4"]
        assert [int(n) for n in re.findall(rb"\nid: \w{8}-(\d+)\ndata", b"\n" + body)] == [2, 3, 4]
    finally:
        rec.gone.set()
        await asyncio.wait_for(task, 5)


async def test_a_replay_goes_page_by_page_and_live_events_meanwhile_wait_under_the_queue_bound():
    """A stream resuming far back reads one history page per chunk taken; live events that
    arrive meanwhile wait in its queue, and past the queue's bound the stream ends as a
    slow consumer (the browser resumes later) instead of holding more."""
    broker = MemoryBroker()
    hub = Hub(broker, Metrics())
    await hub.start()
    try:
        ids = (await broker.publish([Event(("news",), "x" * 1000) for _ in range(200)])).ids
        epoch = ids[0][0].split("-")[0]
        session = StreamSession(hub, hub.metrics, ("news",), [Position(epoch, 1)], False, 3000,
                                queue_size=20, queue_bytes=16 * 1024)
        session.start()
        try:
            chunk, done = await session.first_chunk()
            sizes = [len(chunk)]
            for _ in range(3):
                more, done = await asyncio.wait_for(session.next_chunk(), 5)
                sizes.append(len(more or b""))
            assert not done and max(sizes) <= 16 * 1024 + 2000  # pages of about the byte bound
            assert session.cursor.reading is not None  # still replaying: nothing more was read ahead
            await broker.publish([Event(("news",), "live") for _ in range(25)])  # over queue_size
            while not done:
                more, done = await asyncio.wait_for(session.next_chunk(), 5)
            assert session.end_reason == "slow_consumer"
            assert hub.metrics.slow_consumer_disconnects == 1
        finally:
            session.stop()
    finally:
        await hub.stop()
