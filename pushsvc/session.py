"""One open stream: the async driver of its `Cursor`, and every byte of its body chunk by
chunk: `first_chunk` and `next_chunk`, between `start` and `stop` (the one loop over them,
for both doors, is `pushsvc.core.streams.pump`).

The driver takes what the hub queued for the stream (`StreamQueue`), feeds it to the
cursor, performs the history reads the cursor asks for -- one page per chunk, so a long
replay advances only as the client drains it -- and hands back the bytes.  While a
catch-up runs, live items stay in the subscriber's queue, under its bound: a stream that
does not read meanwhile is cut as a slow consumer and resumes later.

The hot path: a synced one-channel stream whose queue holds only the next live frames
sends their shared bytes as they are (`_live_chunk`, no coroutine per item); anything else
-- a sync, a gap, a reset, a control item -- goes through the cursor item by item.

Order that loses nothing: the subscriber is registered with the hub first; once the hub
reports the channel's subscription confirmed (`Sync`), the stream reads history after its
position up to the synced position, sends it, and only then the live frames queued
meanwhile, skipping any whose sequence it already sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from typing import Any

from . import sse
from .broker import BrokerUnavailable, History
from .cursor import RESET_EVENT, TOKEN_EXPIRED_EVENT, Cursor, End, ReadHistory, jittered
from .hub import TAKE_MAX_BYTES, Hub, StreamQueue
from .metrics import Metrics
from .resume import Position

__all__ = ["OPEN_WAIT_SECONDS", "RESET_EVENT", "TOKEN_EXPIRED_EVENT", "StreamSession", "jittered"]

log = logging.getLogger("pushsvc.stream")

#: How long a new stream holds its opening chunk back for its position (see `first_chunk`).
OPEN_WAIT_SECONDS = 0.1


class Handoff:
    """The rest of a write that `StreamSession.write_now` began outside the stream's task:
    awaiting it in the task resumes ``send``'s coroutine where it stopped (what it waits
    on goes to the task, which resumes it when that is done, or throws the task's
    cancellation into it), or raises what it raised."""

    __slots__ = ("coro", "error", "waiting")

    def __init__(self, coro: Generator[Any, None, None], waiting: Any, error: Exception | None) -> None:
        self.coro = coro
        self.waiting = waiting
        self.error = error

    def __await__(self) -> Generator[Any, None, None]:
        if self.error is not None:
            raise self.error
        coro = self.coro
        waiting = self.waiting
        while True:
            try:
                yield waiting
            except BaseException as exc:  # the task's cancellation, into the write
                try:
                    waiting = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting = coro.send(None)
                except StopIteration:
                    return

    def close(self) -> None:
        """The task ended before it finished the write: close the coroutine (its
        ``finally`` blocks, e.g. a lock's release, run)."""
        if self.error is None:
            self.coro.close()


class StreamSession:
    """One stream; its body is `first_chunk` then `next_chunk` until done, between `start`
    and `stop` (see `pushsvc.core.streams.pump`).  `end_reason` says why it ended, for the
    access log."""

    __slots__ = ("counted", "cursor", "end_reason", "hub", "metrics", "send", "subscriber")

    def __init__(
        self,
        hub: Hub,
        metrics: Metrics,
        channels: tuple[str, ...],
        resume: list[Position] | None,
        unreadable_id: bool,
        retry_ms: int,
        queue_size: int,
        queue_bytes: int,
        expires_at: float | None = None,
    ) -> None:
        self.hub = hub
        self.metrics = metrics
        self.cursor = Cursor(channels, resume, unreadable_id, retry_ms, metrics,
                             queue_size, queue_bytes, min(TAKE_MAX_BYTES, queue_bytes))
        self.counted = 0  # of the cursor's deliveries, how many are in the metrics already
        self.end_reason = "client"
        self.subscriber = StreamQueue(channels, queue_size, queue_bytes, expires_at)
        # The server's ASGI ``send``, set by the pump with a write delay (see `write_now`).
        self.send: Callable[[MutableMapping[str, Any]], Awaitable[None]] | None = None

    @property
    def channels(self) -> tuple[str, ...]:
        return self.cursor.channels

    @property
    def delivered(self) -> int:
        return self.cursor.delivered

    # -- the body ------------------------------------------------------------------------

    def start(self) -> None:
        """Subscribe: from here on the hub queues this stream's items."""
        self.hub.add(self.subscriber)

    def stop(self) -> None:
        """Unsubscribe (synchronous, so it belongs in a ``finally``)."""
        self.hub.remove(self.subscriber)

    async def first_chunk(self) -> tuple[bytes, bool]:
        """The opening chunk (a comment and ``retry:``) with whatever is ready within
        OPEN_WAIT_SECONDS -- normally the stream's position, as soon as its channels are
        synced -- so that a stream opens with one write instead of two.  Call after
        `start`; returns (chunk, whether the stream ends with it)."""
        sub = self.subscriber
        opening = b": pushsvc stream open\n" + sse.retry(self.cursor.retry_ms)
        if not sub.items:
            timer = asyncio.get_running_loop().call_later(OPEN_WAIT_SECONDS, sub.wake)
            try:
                await sub.arm()
            finally:
                timer.cancel()
        if not sub.items:
            return opening, False
        chunk, done = await self._slow_chunk()
        return (opening + chunk if chunk is not None else opening), done

    async def next_chunk(self) -> tuple[bytes | None, bool]:
        """The next chunk of the body once something is queued (and the stream's cooling
        after its last write, if any, is over) or a catch-up has its next page to read (None
        when that produced no bytes), and whether the stream ends with it."""
        if self.cursor.catching is None:
            sub = self.subscriber
            while (sub.cooling or not sub.items) and sub.handoff is None:  # cooling: see `Hub.cool`
                await sub.arm()
            if sub.handoff is not None:  # a write `write_now` began: the pump finishes it first
                return None, False
            chunk = self._live_chunk()
            if chunk is not None:
                return chunk, False
        return await self._slow_chunk()

    def write_now(self, now: float) -> bool:
        """Write the stream's next live frames from the hub's flush timer, without waking
        its task (`Hub._flush_due`, with a write delay, while no write of the stream is
        pending): False (nothing written; the stream is unparked) unless they are plain live
        frames.  A parked stream whose frames are one run in its channel's log writes that
        run's bytes, joined once for every stream parked at the same mark (`ChannelLog.run`);
        else its frames go to its queue and `_live_chunk` takes them.  `now` is the flush
        instant's ``time.monotonic()`` (one reading for all its streams).

        The write is ``send``'s coroutine driven by hand: it normally finishes at once (the
        transport takes the bytes); if it has to wait (the peer's window, a lock), the rest
        of it is handed to the stream's task (`StreamQueue.handoff`, `Handoff`), which the
        pump awaits before anything else -- so the write deadline, the cancellation of an
        interrupted stream and the order of writes are the task's as before."""
        sub = self.subscriber
        log = sub.cooled_in
        if log is not None:  # parked: its frames are in the channel's log, its queue is empty
            run = None if sub.items else log.run(sub)
            if run is not None and self.cursor.take_run(run[1], run[2], run[3]):
                log.repark(sub)  # cools again right away (below): parked anew, past its run
                chunk: bytes | None = run[0]
                sub.last_write = now
                cursor = self.cursor
                self.metrics.events_delivered += cursor.delivered - self.counted
                self.counted = cursor.delivered
            else:
                log.unpark(sub)
                chunk = self._live_chunk() if sub.items else None
        else:
            chunk = self._live_chunk() if sub.items else None
        if chunk is None:
            return False
        sub.writing_since = now
        self.hub.cool(sub, now)
        self.metrics.stream_writes += 1
        assert self.send is not None
        coro = self.send({"type": "http.response.body", "body": chunk, "more_body": True}).__await__()
        try:
            waiting = coro.send(None)
        except StopIteration:
            sub.writing_since = 0.0
            return True
        except Exception as exc:  # the task raises it, as its own send would
            sub.handoff = Handoff(coro, None, exc)
        else:
            sub.handoff = Handoff(coro, waiting, None)
        sub.wake()  # cooling as after any write; the handoff alone makes the task run
        return True

    def _live_chunk(self) -> bytes | None:
        """The hot path, synchronous: the next live frames' bytes as they are (see
        `Cursor.take_live`); None to let `_slow_chunk` feed the queue item by item."""
        sub = self.subscriber
        if sub.nbytes > TAKE_MAX_BYTES:
            return None
        cursor = self.cursor
        chunk = cursor.take_live(sub.items)
        if chunk is None:
            return None
        sub.items = []
        sub.nbytes = 0
        sub.last_write = time.monotonic()
        self.metrics.events_delivered += cursor.delivered - self.counted
        self.counted = cursor.delivered
        return chunk

    async def _slow_chunk(self) -> tuple[bytes | None, bool]:
        """Feed queued items to the cursor (unless a catch-up runs), then read one history
        page if the cursor asks for it."""
        cursor = self.cursor
        out: list[bytes | memoryview] = []
        step = cursor.reading or self._feed(out)
        if type(step) is ReadHistory:
            step = await self._read_page(step, out)
        if type(step) is End:
            self.end_reason = step.reason
        else:
            cursor.flush(out)
        if out or type(step) is End:
            self.subscriber.last_write = time.monotonic()
            self.metrics.events_delivered += cursor.delivered - self.counted
            self.counted = cursor.delivered
        if type(step) is End:
            out.append(step.final)
            return b"".join(out), True
        return (b"".join(out) if out else None), False

    def _feed(self, out: list[bytes | memoryview]) -> End | ReadHistory | None:
        sub = self.subscriber
        items = sub.take_now()
        feed = self.cursor.feed
        for k, item in enumerate(items):
            step = feed(item, out)
            if step is not None:
                if type(step) is ReadHistory:
                    sub.untake(items[k + 1:])
                return step
        return None

    async def _read_page(self, read: ReadHistory, out: list[bytes | memoryview]) -> End | ReadHistory | None:
        """One page of a catch-up; a control that ends the stream goes first (it waits in
        the queue, behind the catch-up otherwise)."""
        cursor = self.cursor
        ending = self.subscriber.ending()
        if ending is not None:
            return cursor.on_control(ending, out)
        try:
            page: History = await self.hub.history(read.channel, read.after_seq, read.need, read.limit)
        except BrokerUnavailable as exc:
            self.metrics.catch_up_failures += 1
            log.warning("catch-up failed", extra={"channel": read.channel, "error": str(exc)})
            return cursor.read_failed()
        room = cursor.chunk_bytes - sum(len(part) for part in out)
        return cursor.on_history(page, out, room)
