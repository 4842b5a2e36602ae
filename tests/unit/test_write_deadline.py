"""The write deadline and the stuck-write cut, without I/O: the hub's ticker interrupts a
stream whose write has been pending for PUSHSVC_WRITE_TIMEOUT_SECONDS (once, counted), and
an overflow interrupts a stream stuck in a write (it would never read its OVERFLOW item)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest

from pushsvc.events import Frame
from pushsvc.hub import OVERFLOW, Hub, StreamQueue
from pushsvc.metrics import Metrics


class NoBroker:
    def subscribe(self, channel: str) -> None:
        pass


def frame(seq: int) -> Frame:
    return Frame("a", "e", seq, b"data: x\n\n", b"id: e-%d\ndata: x\n\n" % seq)


async def stuck_stream(hub: Hub, since: float) -> tuple[StreamQueue, asyncio.Task[Any]]:
    sub = StreamQueue(("a",), 2, 1 << 20)
    hub.add(sub)
    sub.task = asyncio.create_task(asyncio.Event().wait())  # a write that never completes
    sub.writing_since = since
    return sub, sub.task


async def test_a_write_pending_past_the_deadline_is_interrupted_once_and_counted():
    metrics = Metrics()
    hub = Hub(cast(Any, NoBroker()), metrics, write_timeout_seconds=5)
    now = time.monotonic()
    sub, task = await stuck_stream(hub, now)
    hub._tick(now + 4.9)
    assert sub.aborted is None and metrics.write_timeouts == 0
    hub._tick(now + 5.0)
    hub._tick(now + 6.0)
    assert sub.aborted == "write_timeout" and metrics.write_timeouts == 1
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_no_deadline_when_the_setting_is_0_or_no_write_is_pending():
    metrics = Metrics()
    hub = Hub(cast(Any, NoBroker()), metrics, write_timeout_seconds=0)
    now = time.monotonic()
    sub, task = await stuck_stream(hub, now)
    hub._tick(now + 3600)
    hub.write_timeout = 5
    sub.writing_since = 0.0  # between writes: waiting for events is not a stuck write
    hub._tick(now + 3600)
    assert sub.aborted is None and metrics.write_timeouts == 0 and not task.done()
    task.cancel()


async def test_an_overflow_interrupts_a_stream_stuck_in_a_write_but_not_one_waiting_for_events():
    hub = Hub(cast(Any, NoBroker()), Metrics())
    waiting, idle_task = await stuck_stream(hub, 0.0)
    stuck, stuck_task = await stuck_stream(hub, time.monotonic())
    for sub in (waiting, stuck):
        assert [sub.push(frame(n)) for n in (1, 2, 3)] == [True, True, False]
        assert sub.items == [OVERFLOW]
    assert waiting.aborted is None and not idle_task.done()  # it reads OVERFLOW and ends itself
    assert stuck.aborted == "slow_consumer"
    with pytest.raises(asyncio.CancelledError):
        await stuck_task
    idle_task.cancel()
