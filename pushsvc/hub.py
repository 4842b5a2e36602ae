"""Local fan-out: channel -> subscribers, bounded queues, heartbeats, draining.

The hub is the broker's listener.  Each message is parsed and SSE-encoded once into a
`Frame`, then the same object is appended to the bounded queue of every local subscriber
of its channel.  A subscriber whose queue is full is cut (never waited for): its stream
ends and the browser resumes from history with ``Last-Event-ID``.

Per channel the hub keeps a `hub_state.ChannelSync` (the subscription's named state and
the channel's latest position); when a subscription is (re)confirmed it decides the sync
position once and tells every subscriber with a `Sync` item, so streams catch up from
history exactly when a gap is possible -- at start and after a reconnect.  History reads
for catch-ups go through `Hub.history`, one page at a time, shared by the streams that
need the same page at once.

One ticker task serves every stream: heartbeats for idle ones, token expiry, the write
deadline (a stream whose write has been pending for `write_timeout_seconds` is ended), and
unsubscribing channels that nobody has listened to for `linger_seconds`.

Coalesced writes (``PUSHSVC_WRITE_DELAY_MS``, `write_delay_seconds` > 0): a stream that
starts a write *cools* (`Hub.cool`): until its flush instant, at most the delay later, what
arrives for it does not wake it, so it leaves in one write.  A one-channel stream is parked
in its channel's `coalesce.ChannelLog` meanwhile (the fan-out skips it: the frame is logged
once for all parked streams); a multi-channel one keeps receiving frames in its queue
(`StreamQueue.push`).  Cooling streams wait in one bucket per flush instant (instants on a
grid of a quarter of the delay), and one loop timer per bucket writes every due stream that
has something queued -- itself, without waking the stream's task, when what is queued is
plain live frames (`StreamSession.write_now`; streams parked at the same mark share one
joined chunk, `ChannelLog.run`), else by waking it: no timer per stream or per write.  A control item (heartbeat, sync,
close, overflow, expiry) ends the cooling at once, and so do frames reaching the per-write
byte cap (`TAKE_MAX_BYTES`) or half the queue's bound (`StreamQueue.ripe`, `ChannelLog.append`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import gcpolicy
from .broker import Broker, BrokerUnavailable, History
from .coalesce import ChannelLog, Mark
from .cursor import CLOSE, ENDING, EXPIRED, OVERFLOW, PING, Control, Sync
from .events import EventError, Frame, parse_message
from .hub_state import ChannelSync
from .metrics import Metrics
from .resume import Position

__all__ = ["CLOSE", "ENDING", "EXPIRED", "OVERFLOW", "PING", "TAKE_MAX_BYTES", "Control", "Hub", "StreamQueue", "Sync"]

#: Flush instants of cooling streams lie on a grid of this fraction of the write delay: a
#: stream cools for between 3/4 of the delay and the whole delay after its write started.
COOL_GRID_PARTS = 4
#: Finest grid (seconds): asyncio's and uvloop's timers have about millisecond resolution.
COOL_GRID_MIN_SECONDS = 0.001

log = logging.getLogger("pushsvc.hub")


#: The most bytes of frames a stream takes from its queue for one write.
TAKE_MAX_BYTES = 256 * 1024


class StreamQueue:
    """One stream's bounded queue (what the hub calls a subscriber): filled by the hub
    with shared frames and control items, drained by the stream's pump."""

    __slots__ = (
        "aborted",
        "channels",
        "cooled_in",
        "cooling",
        "cut",
        "direct",
        "expires_at",
        "handoff",
        "items",
        "last_write",
        "mark",
        "max_bytes",
        "max_items",
        "nbytes",
        "task",
        "waiter",
        "writing_since",
    )

    def __init__(
        self, channels: tuple[str, ...], max_items: int, max_bytes: int, expires_at: float | None = None
    ) -> None:
        self.channels = channels
        self.items: list[Any] = []  # a list, not a deque: a deque costs ~760 bytes per stream
        self.nbytes = 0
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.waiter: asyncio.Future[None] | None = None
        self.last_write = time.monotonic()
        self.cut = False
        self.expires_at = expires_at
        # Set by the stream's pump (`pushsvc.core.streams.pump`): the task that writes the
        # stream, and since when its current write has been pending (0.0: none pending).
        self.task: asyncio.Task[Any] | None = None
        self.writing_since = 0.0
        self.aborted: str | None = None  # why `interrupt` ended the stream
        # Set by the pump with a write delay: writes the stream's live chunk at its flush
        # instant from the hub's timer, without waking its task (`StreamSession.write_now`);
        # a write that could not finish there is the task's to finish (`handoff`).
        self.direct: Callable[[float], bool] | None = None
        self.handoff: Any = None
        # Set by `Hub.cool`: the flush instant (bucket key) until which queued frames do not
        # wake the stream; 0: not cooling (always, with no write delay).
        self.cooling = 0
        # While parked (a cooling one-channel stream): the channel's log holding its frames.
        self.cooled_in: ChannelLog | None = None
        self.mark: Mark | None = None

    def push(self, frame: Frame) -> bool:
        """Queue a frame; False (and the stream is cut) if the subscriber is over its bound."""
        if self.cut:
            return False
        size = len(frame.single)
        if len(self.items) >= self.max_items or self.nbytes + size > self.max_bytes:
            self.overflow()
            return False
        self.items.append(frame)
        self.nbytes += size
        if self.cooling:  # the only cost of the write delay here, and 0 without one
            if not self.ripe():
                return True
            self.cooling = 0
        self._wake()
        return True

    def overflow(self) -> None:
        """Over its bound: the stream is cut, and ends with an OVERFLOW item."""
        self.cut = True
        self.items.clear()
        self.nbytes = 0
        self.items.append(OVERFLOW)
        self.cooling = 0
        self._wake()
        if self.writing_since:  # stuck in a write: it would never read the OVERFLOW
            self.interrupt("slow_consumer")

    def over_bound(self) -> bool:
        return len(self.items) > self.max_items or self.nbytes > self.max_bytes

    def ripe(self) -> bool:
        """Enough is queued to write at once, cooling or not: the per-write byte cap, or half
        the queue's bound (a delay must not be what makes a queue overflow)."""
        nbytes = self.nbytes
        return (nbytes >= TAKE_MAX_BYTES or 2 * nbytes >= self.max_bytes
                or 2 * len(self.items) >= self.max_items)

    def interrupt(self, reason: str) -> None:
        """End the stream now, although a write of it is pending: cancel the task waiting
        on that write (the pump's ``finally`` then releases queue and session).  A pending
        write never completes while the peer keeps its window at zero, so without this the
        stream would live until the kernel's TCP_USER_TIMEOUT (if any) dropped the socket."""
        task = self.task
        if task is not None and self.aborted is None:
            self.aborted = reason
            task.cancel()

    def push_control(self, item: Control | Sync) -> None:
        """Queue a control item: it wakes the stream at once, cooling or not (after the
        frames parked for it, in their order)."""
        if not self.cut:
            if self.cooled_in is not None:
                self.cooled_in.unpark(self)
            self.items.append(item)
            self.cooling = 0
            self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def arm(self) -> asyncio.Future[None]:
        """A future that the next queued item (or `wake`) completes: what a stream awaits
        while its queue is empty."""
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        return waiter

    wake = _wake

    def take_now(self, max_bytes: int = TAKE_MAX_BYTES) -> list[Any]:
        """What is queued, up to about `max_bytes` of frames (at least one item if any).

        The cap bounds the chunk a stream hands to the transport at once, so a peer that
        stops reading pins at most one chunk in the process besides its queue.
        """
        if self.nbytes <= max_bytes:
            items = self.items
            self.items = []
            self.nbytes = 0
            return items
        queued = self.items
        taken = 0
        count = 0
        while count < len(queued) and taken < max_bytes:
            item = queued[count]
            count += 1
            if type(item) is Frame:
                taken += len(item.single)
        items = queued[:count]
        del queued[:count]
        self.nbytes -= taken
        return items

    def untake(self, items: list[Any]) -> None:
        """Put items taken but not used back in front of the queue (a catch-up started
        before them): they count against the bound again while the stream replays."""
        if items and not self.cut:
            self.items[:0] = items
            self.nbytes += sum(len(item.single) for item in items if type(item) is Frame)

    def ending(self) -> Control | None:
        """A queued control that ends the stream (overflow, close, expiry), if any."""
        for item in self.items:
            if type(item) is Control and item in ENDING:
                return item
        return None


@dataclass(slots=True)
class _Channel:
    subscribers: set[StreamQueue] = field(default_factory=set)
    # The fan-out's set: `subscribers` itself without a write delay; with one, the
    # subscribers but those parked in `log` (see `pushsvc.coalesce`).
    awake: set[StreamQueue] = field(default_factory=set)
    log: ChannelLog | None = None
    sync: ChannelSync = field(default_factory=ChannelSync)
    idle_since: float | None = None
    history: _SharedRead | None = None
    history_pending: asyncio.Future[None] | None = None


@dataclass(slots=True)
class _SharedRead:
    """The last history read of a channel, reused for a second by streams it serves."""

    after_seq: int
    limit: int | None
    result: History
    at: float

    def serves(self, after_seq: int, need: Position) -> bool:
        result = self.result
        if self.after_seq > after_seq or result.epoch != need.epoch or result.last_seq < need.seq:
            return False
        entries = result.entries
        # It must hold the entries right after `after_seq`, or reach the end of history.
        return (self.limit is None or len(entries) < self.limit
                or (bool(entries) and entries[-1][0] > after_seq))


class Hub:
    def __init__(
        self,
        broker: Broker,
        metrics: Metrics,
        keepalive_seconds: float = 15.0,
        linger_seconds: float = 2.0,
        tick_seconds: float = 1.0,
        write_timeout_seconds: float = 0.0,
        write_delay_seconds: float = 0.0,
    ) -> None:
        self.broker = broker
        self.metrics = metrics
        self.keepalive = keepalive_seconds
        self.linger = linger_seconds
        self.tick = min(tick_seconds, keepalive_seconds / 2)
        self.write_timeout = write_timeout_seconds  # 0: no deadline
        self.write_delay = write_delay_seconds  # 0: every chunk written at once (no cooling)
        self._grid = max(write_delay_seconds / COOL_GRID_PARTS, COOL_GRID_MIN_SECONDS)
        self._cooling: dict[int, list[StreamQueue]] = {}  # flush instant (grid index) -> streams
        self._channels: dict[str, _Channel] = {}
        self._subscribers: set[StreamQueue] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._empty = asyncio.Event()
        self._empty.set()
        self.draining = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.broker.start(self)
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever(), name="pushsvc-ticker")

    async def stop(self) -> None:
        for task in [self._ticker, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._ticker, *self._tasks] if t], return_exceptions=True)
        await self.broker.stop()

    async def drain(self, timeout: float) -> int:
        """Ask every stream to end (with a jittered retry); wait up to `timeout` seconds."""
        self.draining = True
        for sub in list(self._subscribers):
            sub.push_control(CLOSE)
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            pass
        return len(self._subscribers)

    @property
    def stream_count(self) -> int:
        return len(self._subscribers)

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    def channel_names(self) -> list[str]:
        """Channels this process's streams listen to (the admin page's list)."""
        return [name for name, state in self._channels.items() if state.subscribers]

    def local_subscribers(self, channel: str) -> int:
        state = self._channels.get(channel)
        return 0 if state is None else len(state.subscribers)

    # -- subscribers -------------------------------------------------------------------

    def add(self, sub: StreamQueue) -> None:
        self._subscribers.add(sub)
        self._empty.clear()
        for channel in sub.channels:
            state = self._channels.get(channel)
            if state is None:
                state = self._channels[channel] = self._new_channel()
                self.broker.subscribe(channel)
            state.subscribers.add(sub)
            state.awake.add(sub)
            state.idle_since = None
            if state.sync.synced:
                sub.push_control(Sync(channel, state.sync.position))

    def remove(self, sub: StreamQueue) -> None:
        if sub not in self._subscribers:
            return
        self._subscribers.discard(sub)
        self._detach(sub)
        if not self._subscribers:
            self._empty.set()

    def _new_channel(self) -> _Channel:
        state = _Channel()
        if self.write_delay:
            state.log = ChannelLog(state.awake, TAKE_MAX_BYTES)
        else:
            state.awake = state.subscribers  # one set: the fan-out is every subscriber
        return state

    def _detach(self, sub: StreamQueue) -> None:
        now = time.monotonic()
        if sub.cooled_in is not None:
            sub.cooled_in.drop(sub)
        for channel in sub.channels:
            state = self._channels.get(channel)
            if state is not None:
                state.subscribers.discard(sub)
                state.awake.discard(sub)
                if not state.subscribers:
                    state.idle_since = now

    # -- broker listener ---------------------------------------------------------------

    def on_message(self, channel: str, payload: bytes, trusted: bool = True) -> None:
        state = self._channels.get(channel)
        if state is None:
            return
        try:
            frame = parse_message(channel, payload, trusted)
        except EventError as exc:
            self.metrics.invalid_messages += 1
            log.warning("dropped an invalid message", extra={"channel": channel, "reason": exc.detail})
            return
        if frame.epoch is not None:
            state.sync.live(Position(frame.epoch, frame.seq))
        self.metrics.events_received += 1
        cut: list[StreamQueue] = []
        for sub in state.awake:
            if not sub.push(frame):
                cut.append(sub)
        parked = state.log
        if parked is not None and parked.parked and parked.append(frame):
            for sub in parked.unpark_all():  # ripe: write at once
                if sub.over_bound():  # one frame larger than half the bound did it
                    sub.overflow()
                    cut.append(sub)
                else:
                    sub.wake()
        if cut:
            for sub in cut:
                self._detach(sub)
                self.metrics.slow_consumer_disconnects += 1
            log.info("cut slow subscribers", extra={"channel": channel, "count": len(cut)})

    def on_subscribed(self, channel: str) -> None:
        state = self._channels.get(channel)
        if state is None or not state.sync.confirmed():
            return  # gone, or a pass is running and will run again
        task = asyncio.get_running_loop().create_task(self._resync(channel, state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resync(self, channel: str, state: _Channel) -> None:
        """Find the exact position from which the confirmed subscription delivers every
        event live, then tell the channel's subscribers (`Sync`).

        Read the channel's position S, then a barrier on the pub/sub connection: every
        event published before the read has then been received.  If live frames arrived
        since the confirmation, the first one (L) shows where live delivery starts:
        streams need history only up to L - 1; otherwise up to S (`ChannelSync.decide`).
        """
        delay = 0.1
        sync = state.sync
        while self._channels.get(channel) is state:
            try:
                position = await self.broker.position(channel)
                await self.broker.barrier()
            except BrokerUnavailable:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                sync.restart()
                continue
            sync_at, again = sync.decide(position)
            for sub in state.subscribers:
                sub.push_control(Sync(channel, sync_at))
            if not again:
                return

    # -- shared history reads ----------------------------------------------------------

    async def history(self, channel: str, after_seq: int, need: Position, limit: int | None = None) -> History:
        """A history page for a stream's catch-up (at most `limit` entries after
        `after_seq`), shared by the streams that need it at once.

        After a Redis restart or a reconnect every stream of a channel catches up at the
        same moment; one read (single flight, reused for a second) serves all whose
        position it covers: read after at most their sequence, reaching `need`, and holding
        the entries right after their sequence.
        """
        state = self._channels.get(channel)
        if state is None:
            return await self.broker.history(channel, after_seq, limit)
        for _ in range(2):
            cached = state.history
            if cached is not None and time.monotonic() - cached.at < 1.0 and cached.serves(after_seq, need):
                return cached.result
            pending = state.history_pending
            if pending is None:
                break
            await asyncio.shield(pending)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.history_pending = done
        try:
            result = await self.broker.history(channel, after_seq, limit)
            state.history = _SharedRead(after_seq, limit, result, time.monotonic())
            return result
        finally:
            done.set_result(None)
            if state.history_pending is done:
                state.history_pending = None

    # -- coalesced writes --------------------------------------------------------------

    def cool(self, sub: StreamQueue, since: float) -> None:
        """`sub` starts a write taken at `since` (``time.monotonic()``): until its flush
        instant -- the last grid point at or before ``since + write_delay`` -- frames queued
        for it wait (see `StreamQueue.push`).  Not if frames are still queued: the write
        took what the byte cap allows of a backlog, whose rest follows at once.  Only
        called with a write delay."""
        if sub.items:
            return
        grid = self._grid
        key = int((since + self.write_delay) / grid)
        sub.cooling = key
        if sub.cooled_in is None and len(sub.channels) == 1:
            state = self._channels.get(sub.channels[0])
            if state is not None and state.log is not None and sub in state.awake:
                state.log.park(sub)
        bucket = self._cooling.get(key)
        if bucket is not None:
            bucket.append(sub)
            return
        self._cooling[key] = [sub]
        asyncio.get_running_loop().call_later(key * grid - time.monotonic(), self._flush_due, key)

    def _flush_due(self, key: int) -> None:
        """A flush instant: every stream still cooling until it stops cooling, and those
        with frames queued write them -- here, from this timer, when they are the next live
        frames and no write of the stream is pending (`StreamQueue.direct`: one task wake-up
        less per write, a quarter of the floor's cost per write), else their task wakes (the
        others wake on their next frame, as usual)."""
        now = time.monotonic()
        for sub in self._cooling.pop(key, ()):
            if sub.cooling == key:
                sub.cooling = 0
                direct = sub.direct
                if direct is not None and not sub.writing_since:
                    if direct(now):  # unparks it unless it writes and parks anew
                        continue
                elif sub.cooled_in is not None:
                    sub.cooled_in.unpark(sub)
                if sub.items:
                    sub.wake()

    # -- ticker ------------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.tick
            await asyncio.sleep(self.tick)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - due))
            try:
                self._tick(time.monotonic())
                gcpolicy.on_tick(self.metrics.streams_opened - len(self._subscribers))  # closed streams
            except Exception:  # the ticker must survive anything
                log.exception("ticker failed")

    def _tick(self, now: float) -> None:
        timeout = self.write_timeout
        for sub in self._subscribers:
            if timeout and sub.writing_since and now - sub.writing_since >= timeout and sub.aborted is None:
                sub.interrupt("write_timeout")
                self.metrics.write_timeouts += 1
                log.info("write timed out", extra={"channels": ",".join(sub.channels)})
                continue
            if sub.expires_at is not None and now >= sub.expires_at:
                sub.expires_at = None
                sub.push_control(EXPIRED)
            elif now - sub.last_write >= self.keepalive:
                sub.last_write = now
                sub.push_control(PING)
        idle = [
            name for name, state in self._channels.items()
            if not state.subscribers and state.idle_since is not None
            and now - state.idle_since >= self.linger
        ]
        for name in idle:
            del self._channels[name]
            self.broker.unsubscribe(name)
        for state in self._channels.values():
            if state.history is not None and now - state.history.at >= 1.0:
                state.history = None
