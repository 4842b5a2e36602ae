"""Coalesced writes (PUSHSVC_WRITE_DELAY_MS), driven through the one stream pump
(`pushsvc.core.streams.pump`) with the embedded broker and a recording ``send``, no network.

A stream that has just written cools: frames queued meanwhile leave together in one write
at its flush instant.  A queue at the per-write byte cap (or half its bound) writes at once;
heartbeats, closes, overflows and token expiry are never held back; catch-up pages are not
slowed; with no delay every event is written at once and no cooling ever starts.

"At once" is checked without clocks: the write has happened after a few turns of the event
loop, far below the delay (seconds here), so a noisy machine cannot make these tests flaky.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from pushsvc.broker.memory import MemoryBroker
from pushsvc.core.streams import pump
from pushsvc.events import Event
from pushsvc.hub import CLOSE, TAKE_MAX_BYTES, Hub, StreamQueue
from pushsvc.metrics import Metrics
from pushsvc.resume import Position
from pushsvc.session import StreamSession

LONG = 10.0  # a delay no test waits for: whatever is written "at once" did not wait for it


class Wire:
    """The server's side of one stream: each body chunk with when it was handed over."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, bytes]] = []
        self.changed = asyncio.Condition()

    async def send(self, message: dict[str, Any]) -> None:
        if message.get("body"):
            async with self.changed:
                self.chunks.append((time.monotonic(), bytes(message["body"])))
                self.changed.notify_all()

    @property
    def bodies(self) -> list[bytes]:
        return [body for _, body in self.chunks]

    def events(self, start: int = 0) -> list[str]:
        return [m.decode() for m in re.findall(rb"data: (e\d+)", b"".join(self.bodies[start:]))]

    async def until(self, predicate: Callable[[Wire], bool], timeout: float = 5) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: predicate(self)), timeout)


async def settle() -> None:
    """A few turns of the event loop: enough for a woken stream to take and write."""
    for _ in range(20):
        await asyncio.sleep(0)


async def eventually(predicate: Callable[[], bool], timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


class Streams:
    """A hub with a write delay over the embedded broker, and streams pumped into `Wire`s."""

    def __init__(self, hub: Hub, broker: MemoryBroker) -> None:
        self.hub = hub
        self.broker = broker
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self, resume: list[Position] | None = None, queue_size: int = 10_000,
                   queue_bytes: int = 4 << 20) -> tuple[StreamSession, Wire, asyncio.Task[None]]:
        """A stream on channel ``news``, once its opening write holds its position."""
        session = StreamSession(self.hub, self.hub.metrics, ("news",), resume, False, 3000,
                                queue_size=queue_size, queue_bytes=queue_bytes)
        wire = Wire()
        task = asyncio.create_task(pump(session, wire.send))
        self.tasks.append(task)
        await wire.until(lambda w: b"\nid: " in b"".join(w.bodies))
        return session, wire, task

    async def publish(self, *datas: str) -> None:
        await self.broker.publish([Event(("news",), data) for data in datas])


@pytest.fixture
async def streams(request: pytest.FixtureRequest) -> AsyncIterator[Streams]:
    delay = getattr(request, "param", LONG)
    broker = MemoryBroker()
    hub = Hub(broker, Metrics(), write_delay_seconds=delay)
    await hub.start()
    s = Streams(hub, broker)
    await s.publish("e0")  # the channel has an epoch: streams open with an id
    try:
        yield s
    finally:
        for task in s.tasks:
            task.cancel()
        await asyncio.gather(*s.tasks, return_exceptions=True)
        await hub.stop()


@pytest.mark.parametrize("streams", [1.0], indirect=True)
async def test_events_queued_while_a_stream_cools_leave_together_in_one_write_after_the_delay(streams):
    session, wire, _ = await streams.open()
    opened_at = wire.chunks[0][0]
    await streams.publish(*[f"e{i}" for i in range(1, 11)])  # right after the opening write: cooling
    await settle()
    assert len(wire.chunks) == 1  # held back
    await wire.until(lambda w: len(w.chunks) >= 2)
    written_at = wire.chunks[1][0]
    assert wire.events(1) == [f"e{i}" for i in range(1, 11)] and len(wire.chunks) == 2  # one write, in order
    assert written_at - opened_at <= 1.0 + 1.0  # the delay (plus a generous allowance for scheduling)
    assert streams.hub.metrics.events_delivered == 10 and streams.hub.metrics.stream_writes == 2

    # After a quiet spell longer than the delay, the next event is written at once.
    await eventually(lambda: session.subscriber.cooling == 0)
    await streams.publish("e11")
    await settle()
    assert wire.events(2) == ["e11"]


@pytest.mark.parametrize("streams", [1.0], indirect=True)
async def test_events_queued_during_a_slow_write_still_wait_for_the_flush_instant(streams):
    """A write that takes a while (the peer reads slowly): what arrives meanwhile is not
    written the moment it returns, but with what follows, at the flush instant."""
    session = StreamSession(streams.hub, streams.hub.metrics, ("news",), None, False, 3000,
                            queue_size=1000, queue_bytes=1 << 20)
    wire = Wire()
    release = asyncio.Event()

    async def slow_send(message: dict[str, Any]) -> None:
        if len(wire.chunks) == 1:  # the write after the opening stalls until released
            await release.wait()
        await wire.send(message)

    streams.tasks.append(asyncio.create_task(pump(session, slow_send)))
    await wire.until(lambda w: b"\nid: " in b"".join(w.bodies))
    await eventually(lambda: session.subscriber.cooling == 0)
    await streams.publish("e1")  # written at once: its write stalls
    await settle()
    await streams.publish("e2", "e3")  # queued during the stalled write
    release.set()
    await wire.until(lambda w: len(w.chunks) == 2)
    await settle()
    assert wire.events(1) == ["e1"]  # e2 and e3 wait: the stream started a write just now
    await wire.until(lambda w: len(w.chunks) == 3)
    assert wire.events(2) == ["e2", "e3"]


async def test_a_queue_reaching_the_per_write_byte_cap_is_written_at_once(streams):
    _, wire, _ = await streams.open()
    big = "x" * 1000
    count = TAKE_MAX_BYTES // 1100  # each frame is about 1,030 bytes: under the cap, held back
    await streams.publish(*[f"e{i} {big}" for i in range(1, count)])
    await settle()
    assert len(wire.chunks) == 1
    await streams.publish(*[f"e{i} {big}" for i in range(count, count + 30)])  # over the cap
    await settle()
    assert wire.events(1) == [f"e{i}" for i in range(1, count + 30)]
    assert max(len(body) for body in wire.bodies[1:]) <= TAKE_MAX_BYTES + 2000  # chunks stay capped


async def test_a_queue_reaching_half_its_bound_is_written_at_once_so_the_delay_never_overflows_it(streams):
    _, wire, _ = await streams.open(queue_size=20)
    await streams.publish(*[f"e{i}" for i in range(1, 10)])
    await settle()
    assert len(wire.chunks) == 1  # 9 of 20: held back
    await streams.publish("e10")
    await settle()
    assert wire.events(1) == [f"e{i}" for i in range(1, 11)]
    assert streams.hub.metrics.slow_consumer_disconnects == 0


async def test_a_heartbeat_is_not_held_back_by_cooling(streams):
    session, wire, _ = await streams.open()
    sub = session.subscriber
    assert sub.cooling  # it has just written its opening
    streams.hub._tick(time.monotonic() + streams.hub.keepalive + 1)
    await settle()
    assert wire.bodies[1:] == [b": ping\n\n"]


@pytest.mark.parametrize("end", ["shutdown", "slow_consumer", "token_expired"])
async def test_a_stream_ending_while_cooling_ends_at_once_with_what_was_queued(streams, end):
    queue_bytes = 16 * 1024
    session, wire, task = await streams.open(queue_bytes=queue_bytes)
    sub = session.subscriber
    await streams.publish("e1", "e2")
    await settle()
    assert len(wire.chunks) == 1 and sub.cooling
    if end == "shutdown":
        sub.push_control(CLOSE)
    elif end == "slow_consumer":
        await streams.publish("f" * (queue_bytes + 1))  # over the byte bound in one event
    else:
        sub.expires_at = time.monotonic()
        streams.hub._tick(time.monotonic() + 1)
    await settle()
    assert task.done() and session.end_reason == end
    if end != "slow_consumer":  # an overflow drops what was queued; the browser resumes from history
        assert wire.events(1) == ["e1", "e2"]


async def test_catch_up_pages_are_not_slowed_by_the_delay(streams):
    """A stream resuming far back replays page after page, each its own write, without
    waiting for the delay between them (a page per delay would take minutes here)."""
    ids = (await streams.broker.publish([Event(("news",), f"e{i} " + "x" * 1000) for i in range(1, 201)])).ids
    epoch = ids[0][0].split("-")[0]
    _, wire, _ = await streams.open(resume=[Position(epoch, 1)], queue_bytes=16 * 1024)
    await wire.until(lambda w: "e200" in w.events(), timeout=5)
    assert wire.events() == [f"e{i}" for i in range(1, 201)]
    assert len(wire.chunks) > 5  # pages of about the chunk size, not one write per delay
    assert streams.hub.metrics.events_replayed == 200


async def test_cooling_streams_share_one_timer_per_flush_instant(streams):
    opened = [await streams.open() for _ in range(50)]
    assert all(session.subscriber.cooling for session, _, _ in opened)
    assert len(streams.hub._cooling) <= 2  # one or two grid instants, each one timer, for 50 streams


async def test_an_earlier_flush_instant_does_not_end_a_later_cooling(streams):
    """A stream that wrote again (a heartbeat, a full queue) before its flush instant cools
    until its new instant; the old one's timer leaves it cooling."""
    session, _, _ = await streams.open()
    sub = session.subscriber
    first = sub.cooling
    streams.hub.cool(sub, time.monotonic() + LONG)  # a write started a delay later
    second = sub.cooling
    assert second > first
    streams.hub._flush_due(first)
    assert sub.cooling == second
    streams.hub._flush_due(second)
    assert sub.cooling == 0


@pytest.mark.parametrize("streams", [0.0], indirect=True)
async def test_with_no_delay_every_event_is_written_at_once_and_nothing_cools(streams):
    session, wire, _ = await streams.open()
    for i in range(1, 6):
        await streams.publish(f"e{i}")
        await settle()
        assert wire.events(1) == [f"e{n}" for n in range(1, i + 1)] and len(wire.chunks) == i + 1
    assert session.subscriber.cooling == 0 and not streams.hub._cooling
    assert streams.hub.metrics.stream_writes == 6


# -- the channel log: one-channel streams parked while they cool (pushsvc/coalesce.py) ----------


def datas(items: list[Any]) -> list[str]:
    return [m.decode() for item in items for m in re.findall(rb"data: (\S+)", item.single)]


async def parked_pair(streams: Streams) -> tuple[Any, Any, Any]:
    """Two queues on ``news`` (no pump: the test plays the stream's part), the first parked
    before e1, the second before e3."""
    hub = streams.hub
    first, second = (StreamQueue(("news",), 1000, 1 << 20) for _ in range(2))
    for sub in (first, second):
        hub.add(sub)
    await eventually(lambda: first.items and second.items)  # the channel's Sync
    first.items, second.items = [], []
    hub.cool(first, time.monotonic())
    await streams.publish("e1", "e2")
    second.items, second.nbytes = [], 0  # the second stream takes e1 and e2 and writes them:
    hub.cool(second, time.monotonic() + LONG)  # it cools until a later flush instant
    await streams.publish("e3")
    return hub._channels["news"].log, first, second


async def test_parked_streams_take_exactly_their_frames_and_the_log_keeps_only_what_is_still_owed(streams):
    log, first, second = await parked_pair(streams)
    assert first.items == [] and second.items == []  # parked: the fan-out skipped them
    assert datas(log.frames) == ["e1", "e2", "e3"]
    streams.hub._flush_due(first.cooling)
    assert datas(first.items) == ["e1", "e2", "e3"] and first.nbytes == sum(len(f.single) for f in first.items)
    assert datas(log.frames) == ["e3"]  # what the second stream still needs, no more
    await streams.publish("e4")  # the first stream is back in the fan-out: straight to its queue
    assert datas(first.items) == ["e1", "e2", "e3", "e4"]
    streams.hub._flush_due(second.cooling)
    assert datas(second.items) == ["e3", "e4"]
    assert log.frames == [] and not log.parked


async def test_a_parked_stream_that_leaves_releases_its_share_of_the_log(streams):
    log, first, second = await parked_pair(streams)
    streams.hub.remove(first)
    assert first.cooled_in is None and datas(log.frames) == ["e3"]
    streams.hub.remove(second)
    assert log.frames == [] and not log.parked
    await streams.publish("e4")  # nobody parked: nothing logged
    assert log.frames == []


async def test_a_control_item_for_a_parked_stream_comes_after_its_parked_frames(streams):
    _, first, _ = await parked_pair(streams)
    first.push_control(CLOSE)
    assert datas(first.items[:-1]) == ["e1", "e2", "e3"] and first.items[-1] is CLOSE
    assert first.cooling == 0 and first.cooled_in is None


@pytest.mark.parametrize("streams", [1.0], indirect=True)
async def test_a_multi_channel_stream_coalesces_too_in_arrival_order(streams):
    session = StreamSession(streams.hub, streams.hub.metrics, ("news", "sport"), None, False, 3000,
                            queue_size=1000, queue_bytes=1 << 20)
    wire = Wire()
    streams.tasks.append(asyncio.create_task(pump(session, wire.send)))
    await wire.until(lambda w: b"\nid: " in b"".join(w.bodies))
    await eventually(lambda: session.subscriber.cooling == 0)
    await streams.broker.publish([Event(("sport",), "e1")])  # at once
    await settle()
    assert wire.events(1) == ["e1"]
    for i, channel in enumerate(["news", "sport", "news", "sport"], start=2):
        await streams.broker.publish([Event((channel,), f"e{i}")])
    await settle()
    assert len(wire.chunks) == 2  # held back
    await wire.until(lambda w: len(w.chunks) == 3)
    assert wire.events(2) == ["e2", "e3", "e4", "e5"]


async def test_a_ripe_log_hands_each_parked_stream_its_frames_once_and_wakes_it(streams):
    hub = streams.hub
    sub = StreamQueue(("news",), 6, 1 << 20)  # ripe at 3 frames (half its bound)
    hub.add(sub)
    await eventually(lambda: sub.items)
    sub.items = []
    hub.cool(sub, time.monotonic())
    waiter = sub.arm()
    await streams.publish("e1", "e2")
    assert sub.items == [] and not waiter.done()
    await streams.publish("e3")
    assert datas(sub.items) == ["e1", "e2", "e3"] and waiter.done() and sub.cooling == 0
    await streams.publish("e4")  # back in the fan-out, once
    assert datas(sub.items) == ["e1", "e2", "e3", "e4"]


# -- writes at the flush instant, from the hub's timer (`StreamSession.write_now`) -------------


class TaskWire(Wire):
    """A `Wire` that also records which task handed each chunk over (None: a loop callback)."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: list[asyncio.Task[Any] | None] = []

    async def send(self, message: dict[str, Any]) -> None:
        if message.get("body"):
            self.writers.append(asyncio.current_task())
        await super().send(message)


async def flush(streams: Streams, *sessions: StreamSession) -> None:
    """The flush instant of each stream, now (the delay is LONG): the hub's timer callback
    for its bucket, run by the loop as the timer would."""
    loop = asyncio.get_running_loop()
    for key in {s.subscriber.cooling for s in sessions if s.subscriber.cooling}:
        loop.call_soon(streams.hub._flush_due, key)
    await settle()


async def open_with(streams: Streams, send: Callable[[dict[str, Any]], Any],
                    wire: Wire) -> tuple[StreamSession, asyncio.Task[None]]:
    session = StreamSession(streams.hub, streams.hub.metrics, ("news",), None, False, 3000,
                            queue_size=1000, queue_bytes=1 << 20)
    task = asyncio.create_task(pump(session, send))
    streams.tasks.append(task)
    await wire.until(lambda w: b"\nid: " in b"".join(w.bodies))
    return session, task


async def test_at_a_flush_instant_the_hub_timer_writes_the_stream_without_waking_its_task(streams):
    wire = TaskWire()
    session, task = await open_with(streams, wire.send, wire)
    assert wire.writers[0] is task  # the opening write: the stream's own task
    for round_ in range(3):  # each burst lands while the stream cools after the previous write
        await streams.publish(*[f"e{round_}{i}" for i in range(5)])
        await settle()
        assert len(wire.chunks) == round_ + 1  # held back
        await flush(streams, session)
        await wire.until(lambda w, n=round_ + 2: len(w.chunks) >= n)
    assert wire.events(1) == [f"e{r}{i}" for r in range(3) for i in range(5)]
    assert len(wire.chunks) == 4
    assert wire.writers[1:] == [None, None, None]  # written from the flush timer, not by the task
    assert session.subscriber.writing_since == 0.0 and session.subscriber.handoff is None
    assert streams.hub.metrics.stream_writes == 4 and streams.hub.metrics.events_delivered == 15
    log = streams.hub._channels["news"].log
    assert session.subscriber.cooled_in is log  # parked anew after each write ...
    assert log.frames == [] and len(log.parked) == 1  # ... and the log keeps nothing already written


async def test_a_flush_instant_write_that_must_wait_is_finished_by_the_stream_task_in_order(streams):
    """The peer stops reading during a write begun at a flush instant: the stream's task
    takes over the rest of that write (the write deadline sees it pending meanwhile), and
    what arrives meanwhile follows it, in order, exactly once."""
    wire = TaskWire()
    release = asyncio.Event()
    blocked = asyncio.Event()
    finished: list[asyncio.Task[Any] | None] = []

    started_in: list[asyncio.Task[Any] | None] = []

    async def stalling_send(message: dict[str, Any]) -> None:
        if len(wire.chunks) == 1 and not release.is_set():  # the first write after the opening
            started_in.append(asyncio.current_task())
            blocked.set()
            await release.wait()
            finished.append(asyncio.current_task())
        await wire.send(message)

    session, task = await open_with(streams, stalling_send, wire)
    sub = session.subscriber
    await streams.publish("e1", "e2")
    await flush(streams, session)
    await asyncio.wait_for(blocked.wait(), 5)
    assert sub.writing_since > 0.0  # pending: the write deadline applies to it
    await streams.publish("e3")
    await settle()
    assert len(wire.chunks) == 1
    release.set()
    await settle()
    assert len(wire.chunks) == 2  # the task resumed the write at once, not at a later flush instant
    await flush(streams, session)  # e3 waited for the next flush instant
    await wire.until(lambda w: w.events(1) == ["e1", "e2", "e3"])
    assert started_in == [None]  # begun by the flush timer ...
    assert finished == [task]  # ... and the rest of the write ran in the stream's task
    assert wire.events(1) == ["e1", "e2", "e3"] and wire.bodies[1].count(b"data: ") == 2
    assert sub.handoff is None
    await eventually(lambda: sub.writing_since == 0.0)
    await streams.publish("e4")
    await flush(streams, session)
    await wire.until(lambda w: "e4" in w.events(1))
    assert wire.events(1) == ["e1", "e2", "e3", "e4"]


async def test_a_stream_interrupted_during_a_handed_over_write_ends_and_the_write_is_cancelled(streams):
    wire = Wire()
    cleaned_up = asyncio.Event()

    async def stuck_send(message: dict[str, Any]) -> None:
        if len(wire.chunks) == 1:
            try:
                await asyncio.Event().wait()  # a peer that never reads again
            finally:
                cleaned_up.set()
        await wire.send(message)

    session, task = await open_with(streams, stuck_send, wire)
    sub = session.subscriber
    await streams.publish("e1")  # cooling: written at the flush instant, where it gets stuck
    await flush(streams, session)
    await eventually(lambda: sub.writing_since > 0.0 and sub.handoff is None)  # the task holds it
    sub.interrupt("write_timeout")  # what the hub's ticker does past the write deadline
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
    assert cleaned_up.is_set()
    assert session.end_reason == "write_timeout"
    assert sub not in streams.hub._subscribers


async def test_a_flush_instant_write_that_fails_fails_the_stream_task(streams):
    wire = Wire()

    async def failing_send(message: dict[str, Any]) -> None:
        if len(wire.chunks) == 1:
            raise RuntimeError("the transport broke")
        await wire.send(message)

    session, task = await open_with(streams, failing_send, wire)
    await streams.publish("e1")
    await flush(streams, session)
    with pytest.raises(RuntimeError, match="the transport broke"):
        await asyncio.wait_for(task, 5)
    assert session.subscriber not in streams.hub._subscribers


# -- one run of live frames, joined once for every stream parked at the same mark ---------------


def frame(epoch: str | None, seq: int) -> Any:
    from pushsvc.events import Frame

    body = b"data: %s-%d\n\n" % ((epoch or "foreign").encode(), seq)
    single = body if epoch is None else b"id: %s-%d\n" % (epoch.encode(), seq) + body
    return Frame("news", epoch, seq, body, single)


def parked_log(*subs: StreamQueue) -> Any:
    from pushsvc.coalesce import ChannelLog

    log = ChannelLog(set(subs), TAKE_MAX_BYTES)
    for sub in subs:
        log.park(sub)
    return log


def test_a_run_of_live_frames_is_joined_once_for_every_stream_parked_at_the_same_mark():
    a, b, late = (StreamQueue(("news",), 1000, 1 << 20) for _ in range(3))
    log = parked_log(a, b)
    for seq in (5, 6, 7):
        log.append(frame("E", seq))
    log.park(late)
    log.append(frame("E", 8))
    run_a, run_b = log.run(a), log.run(b)
    assert run_a is run_b  # the same tuple: joined once
    chunk, first, last, count = run_a
    assert chunk == b"".join(frame("E", s).single for s in (5, 6, 7, 8))
    assert (first.seq, last.seq, count) == (5, 8, 4)
    log.append(frame("E", 9))  # the log grew: the shared run is recomputed, not reused stale
    assert log.run(a)[3] == 5 and log.run(a)[2].seq == 9
    assert log.run(late)[0] == frame("E", 8).single + frame("E", 9).single  # its own mark: its own slice


@pytest.mark.parametrize("breaker", [
    pytest.param(lambda: frame(None, 0), id="a foreign frame"),
    pytest.param(lambda: frame("F", 1), id="a new epoch"),
    pytest.param(lambda: frame("E", 9), id="a gap in seqs"),
])
def test_a_parked_slice_that_is_not_one_run_is_not_taken_as_one(breaker):
    a = StreamQueue(("news",), 1000, 1 << 20)
    log = parked_log(a)
    log.append(frame("E", 5))
    log.append(breaker())
    assert log.run(a) is None  # taken frame by frame (the cursor sees the reset, gap or foreign frame)
    log.append(frame("E", 10))
    assert log.run(a) is None
    b = StreamQueue(("news",), 1000, 1 << 20)
    log.park(b)
    log.append(frame("E", 11))
    assert log.run(b) is not None and log.run(b)[3] == 1  # a run that starts after the break is one


async def test_streams_parked_at_the_same_mark_write_the_same_bytes_joined_once(streams):
    wires = [TaskWire() for _ in range(3)]
    sent: list[list[bytes]] = [[] for _ in wires]

    def recording(i: int) -> Callable[[dict[str, Any]], Any]:
        async def send(message: dict[str, Any]) -> None:
            if message.get("body"):
                sent[i].append(message["body"])
            await wires[i].send(message)
        return send

    sessions = [(await open_with(streams, recording(i), wire))[0] for i, wire in enumerate(wires)]
    await streams.publish("e1", "e2", "e3")  # all three parked since their opening writes
    await flush(streams, *sessions)
    for wire in wires:
        await wire.until(lambda w: "e3" in w.events(1))
    assert [w.events(1) for w in wires] == [["e1", "e2", "e3"]] * 3
    assert [w.writers[-1] for w in wires] == [None] * 3  # from the flush timer
    last = [s[-1] for s in sent]
    assert last[0] is last[1] is last[2]  # one join for the three streams
    assert streams.hub.metrics.events_delivered == 9
