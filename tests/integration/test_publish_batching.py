"""Concurrent publishes sharing Redis pipelines (`pushsvc/broker/batcher.py` and the
broker's `ScriptPipelines`) on a real redis-server: each request keeps its own ids, its own
idempotency and its own failure; a connection lost after the pipeline left gives every
request in it ``OutcomeUnknown``, one that cannot be made gives ``BrokerUnavailable``
(nothing stored); a connection Redis dropped while idle, or a lost script cache, is healed
without storing anything twice.  A pipeline on a connection that is up leaves without a
task (`ScriptPipelines.start`); one that Redis answers only after its deadline is
``OutcomeUnknown``, and that late answer never reaches the next pipeline."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from pushsvc import wire
from pushsvc.broker import BrokerUnavailable, Idempotency, IdempotencyConflict, OutcomeUnknown
from pushsvc.broker.redis import RedisBroker
from pushsvc.events import Event
from tests.support.procs import RedisServer
from tests.unit.test_brokers import Recorder

pytestmark = pytest.mark.redis


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[RedisBroker]:
    b = RedisBroker(redis_url, timeout_seconds=2.0)
    await b.start(Recorder())
    yield b
    await b.stop()


async def stored(redis_url: str, channel: str) -> list[bytes]:
    async with aioredis.from_url(redis_url) as client:
        return [fields[b"m"] for _, fields in await client.xrange(wire.history_key(channel))]


async def test_concurrent_publishes_share_pipelines_and_each_gets_its_own_ids(broker, redis_url):
    requests = [[Event(("batch",), f"r{n}-e{e}") for e in range(n % 3 + 1)] for n in range(30)]
    published = await asyncio.wait_for(asyncio.gather(*[broker.publish(r) for r in requests]), 10)
    assert broker.batcher.pipelines < len(requests)  # they shared round trips
    ids = [i for p in published for event_ids in p.ids for i in event_ids]
    assert len(ids) == sum(map(len, requests)) == len(set(ids))
    history = await stored(redis_url, "batch")
    by_data = {wire.message_prefix(e.data, None, None): e for r in requests for e in r}
    assert len(history) == len(by_data)  # every event stored once
    for request, result in zip(requests, published, strict=True):
        assert not result.replayed
        seqs = [int(event_ids[0].rsplit("-", 1)[1]) for event_ids in result.ids]
        assert seqs == sorted(seqs)  # a request's events keep their order
        for event, seq in zip(request, seqs, strict=True):
            assert history[seq - 1].startswith(wire.message_prefix(event.data, None, None))


async def test_an_idempotent_repeat_in_the_same_pipeline_is_answered_with_the_first_ids(broker, redis_url):
    events = [Event(("idem",), "once")]
    key = Idempotency("t:tester", "order-1", 300)
    first, again, other = await asyncio.wait_for(asyncio.gather(
        broker.publish(events, key), broker.publish(events, key),
        broker.publish([Event(("idem",), "another request")], key), return_exceptions=True), 10)
    assert broker.batcher.pipelines == 1
    assert not first.replayed and again.replayed and again.ids == first.ids
    assert isinstance(other, IdempotencyConflict)
    assert len(await stored(redis_url, "idem")) == 1


async def test_a_request_redis_refuses_does_not_fail_the_others_in_its_pipeline(broker, redis_url):
    async with aioredis.from_url(redis_url) as client:
        await client.set(wire.meta_key("broken"), "not a hash")  # its script call fails: WRONGTYPE
    results = await asyncio.wait_for(asyncio.gather(
        broker.publish([Event(("fine",), 1)]), broker.publish([Event(("broken",), 2)]),
        broker.publish([Event(("fine",), 3)]), return_exceptions=True), 10)
    assert broker.batcher.pipelines == 1
    assert isinstance(results[1], OutcomeUnknown) and "WRONGTYPE" in str(results[1])
    assert [r.ids[0][0].endswith(f"-{seq}") for r, seq in ((results[0], 1), (results[2], 2))] == [True, True]
    assert len(await stored(redis_url, "fine")) == 2


class Proxy:
    """A TCP proxy to Redis that can swallow what clients send and close them (the
    connection lost after a pipeline left) and refuse new connections."""

    def __init__(self, redis_url: str) -> None:
        target = urlsplit(redis_url)
        self.target = (target.hostname or "127.0.0.1", target.port or 6379)
        self.swallow = False
        self.swallow_next = False  # the next thing a client sends only, then as usual
        self.reset = False  # a swallowing close is a reset (RST), not a FIN
        self.refuse = False
        self.swallowed = 0
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, upstream: bool) -> None:
            try:
                while data := await src.read(65536):
                    if upstream and (self.swallow or self.swallow_next):
                        self.swallowed += 1
                        self.swallow_next = False
                        if self.reset:
                            sock = writer.get_extra_info("socket")
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()
                up_writer.close()

        for task in (asyncio.ensure_future(pump(reader, up_writer, True)),
                     asyncio.ensure_future(pump(up_reader, writer, False))):
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[Proxy]:
    p = Proxy(redis_url)
    yield p
    await p.stop()


async def test_a_connection_lost_after_the_pipeline_left_is_outcome_unknown_for_each_request(proxy, redis_url):
    b = RedisBroker(await proxy.start(), timeout_seconds=1.0)
    await b.start(Recorder())
    try:
        await asyncio.wait_for(b.publish([Event(("lost",), "before")]), 10)  # connected through the proxy
        proxy.swallow = proxy.refuse = True  # the pipeline never reaches Redis; no reconnect either
        results = await asyncio.wait_for(asyncio.gather(
            *[b.publish([Event(("lost",), n)]) for n in range(4)], return_exceptions=True), 10)
        assert proxy.swallowed >= 1
        assert all(isinstance(r, OutcomeUnknown) for r in results), results
        proxy.swallow = proxy.refuse = False
        after = await asyncio.wait_for(b.publish([Event(("lost",), "after")]), 10)  # reconnects
        assert after.ids[0][0].endswith("-2")
        assert len(await stored(redis_url, "lost")) == 2
    finally:
        await b.stop()


@pytest.mark.parametrize("how", ["closed", "reset"])
async def test_a_connection_lost_after_the_pipeline_left_is_reconnected_and_the_pipeline_sent_again_once(
    proxy, redis_url, how
):
    proxy.reset = how == "reset"
    b = RedisBroker(await proxy.start(), timeout_seconds=5.0)
    await b.start(Recorder())
    try:
        await asyncio.wait_for(b.publish([Event(("again",), "before")]), 10)  # connected through the proxy
        started = b._pipelines.started
        proxy.swallow_next = True  # the pipeline is lost with its connection; the next one is not
        results = await asyncio.wait_for(asyncio.gather(*[b.publish([Event(("again",), n)]) for n in range(4)]), 10)
        assert proxy.swallowed == 1 and b._pipelines.started == started + 1
        assert sorted(r.ids[0][0].rsplit("-", 1)[1] for r in results) == ["2", "3", "4", "5"]
        assert len(await stored(redis_url, "again")) == 5  # each stored once
    finally:
        await b.stop()


async def test_a_connection_that_cannot_be_made_is_broker_unavailable_for_each_request(proxy, redis_url):
    proxy.refuse = True
    b = RedisBroker(await proxy.start(), timeout_seconds=1.0)
    await b.start(Recorder())
    try:
        results = await asyncio.wait_for(asyncio.gather(
            *[b.publish([Event(("refused",), n)]) for n in range(4)], return_exceptions=True), 10)
        assert all(type(r) is BrokerUnavailable for r in results), results  # nothing was sent
        assert await stored(redis_url, "refused") == []
    finally:
        await b.stop()


async def test_a_connection_redis_dropped_while_idle_is_reconnected_and_nothing_is_stored_twice(broker, redis_url):
    await asyncio.wait_for(broker.publish([Event(("idle",), 1)]), 10)
    async with aioredis.from_url(redis_url) as admin:
        assert await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes") >= 1
    results = await asyncio.wait_for(asyncio.gather(*[broker.publish([Event(("idle",), n)]) for n in (2, 3)]), 10)
    assert [r.ids[0][0].rsplit("-", 1)[1] for r in results] == ["2", "3"]
    assert not any(r.replayed for r in results)
    assert len(await stored(redis_url, "idle")) == 3


async def test_a_lost_script_cache_is_reloaded_and_the_publish_goes_through(broker, redis_url):
    await asyncio.wait_for(broker.publish([Event(("noscript",), 1)]), 10)
    async with aioredis.from_url(redis_url) as admin:
        await admin.script_flush()
    results = await asyncio.wait_for(asyncio.gather(*[broker.publish([Event(("noscript",), n)]) for n in (2, 3)]), 10)
    assert [r.ids[0][0].rsplit("-", 1)[1] for r in results] == ["2", "3"]
    assert len(await stored(redis_url, "noscript")) == 3


async def test_pipelines_on_a_connection_that_is_up_leave_without_a_task(broker, redis_url):
    await asyncio.wait_for(broker.publish([Event(("fast",), 0)]), 10)  # connected
    pipes = broker._pipelines
    started, sent = pipes.started, pipes.sent
    for n in range(1, 6):
        publishes = [broker.publish([Event(("fast",), (n, k))]) for k in range(4)]
        results = await asyncio.wait_for(asyncio.gather(*publishes), 10)
        assert [r.ids[0][0].rsplit("-", 1)[1] for r in results] == [str(4 * n - 2 + k) for k in range(4)]
    assert pipes.sent == sent  # no task took any of them
    assert pipes.started - started == broker.batcher.pipelines - 1 >= 5


async def test_an_answer_that_comes_after_the_deadline_is_outcome_unknown_and_never_reaches_the_next_pipeline(
    private_redis: RedisServer,
):
    b = RedisBroker(private_redis.url, timeout_seconds=1.0)
    await b.start(Recorder())
    try:
        await asyncio.wait_for(b.publish([Event(("late",), "first")]), 10)  # connected, script loaded
        started, pipelines = b._pipelines.started, b.batcher.pipelines
        private_redis.pause()
        try:
            late = await asyncio.wait_for(
                asyncio.gather(*[b.publish([Event(("late",), n)]) for n in range(3)], return_exceptions=True), 10)
        finally:
            private_redis.resume()  # Redis now runs the late pipeline and answers it
        assert all(isinstance(r, OutcomeUnknown) for r in late), late
        assert b._pipelines.started == started + 1  # the late pipeline left without a task
        async with asyncio.timeout(10):
            while len(await stored(private_redis.url, "late")) < 4:  # Redis ran it, and answered
                await asyncio.sleep(0.02)
        after = await asyncio.wait_for(b.publish([Event(("late",), "after")]), 10)
        # Its own answer: the late pipeline stored 3 events (seq 2-4), so this one is seq 5 --
        # a connection still carrying the late answer would have handed it seq 2.
        assert after.ids[0][0].endswith("-5"), after
        assert len(await stored(private_redis.url, "late")) == 5
        assert b.batcher.pipelines == pipelines + 1  # the late answer was answered to nobody
    finally:
        await b.stop()
