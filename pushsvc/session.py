"""One open stream: its positions, resume and catch-up, and every byte of its body
(events, replays, resets, heartbeats, the final ``retry:``), chunk by chunk: `first_chunk`
and `next_chunk` (the one loop over them, for both doors, is `pushsvc.core.streams.pump`).

The hot path: a synced one-channel stream whose queue holds only the next live frames
sends their shared bytes as they are (`_live_chunk`, no coroutine per item); anything else
-- a sync, a gap, a reset, a control item -- goes through `_handle` item by item.

Order that loses nothing: the subscriber is registered with the hub first; once the hub
reports the channel's subscription confirmed (`Sync`), the stream reads history after its
position, sends it, and only then the live frames queued meanwhile, skipping any whose
sequence it already sent.  A live frame that does not directly follow the stream's
position (a gap after a Redis reconnect, or a new epoch) triggers the same catch-up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Any

from . import sse
from .broker import BrokerUnavailable
from .events import EventError, Frame, parse_message
from .hub import CLOSE, EXPIRED, OVERFLOW, PING, TAKE_MAX_BYTES, Hub, Subscriber, Sync
from .metrics import Metrics
from .resume import Position

log = logging.getLogger("pushsvc.stream")

RESET_EVENT = "pushsvc.reset"
TOKEN_EXPIRED_EVENT = "pushsvc.token_expired"

#: How long a new stream holds its opening chunk back for its position (see `first_chunk`).
OPEN_WAIT_SECONDS = 0.1

_ONE_CHANNEL: dict[str, int] = {}  # shared, never written: a one-channel stream's index is always 0


def jittered(ms: int) -> int:
    return int(ms * random.uniform(0.8, 1.2))


class StreamSession:
    """State of one stream; its body is `first_chunk` then `next_chunk` until done, between
    `start` and `stop` (see `pushsvc.core.streams.pump`)."""

    # One per open stream: no per-instance dict, and no per-channel maps on the (usual)
    # one-channel stream.
    __slots__ = (
        "channels", "counted", "delivered", "dirty", "end_reason", "epochs", "fresh", "held", "hub", "index",
        "metrics", "multi", "parts", "pending_resets", "retry_ms", "seqs", "subscriber", "synced", "unreadable",
    )

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
        self.channels = channels  # sorted, unique
        self.multi = len(channels) > 1
        self.index = {name: i for i, name in enumerate(channels)} if self.multi else _ONE_CHANNEL
        self.retry_ms = retry_ms
        count = len(channels)
        self.epochs: list[str | None] = [p.epoch for p in resume] if resume else [None] * count
        self.seqs: list[int] = [p.seq for p in resume] if resume else [0] * count
        self.parts = (  # the id's parts: multi-channel streams only
            [Position(e, s).format() for e, s in zip(self.epochs, self.seqs, strict=True)] if self.multi else []
        )
        self.synced = [False] * count
        self.fresh = resume is None and not unreadable_id
        self.unreadable = unreadable_id
        self.held: list[Frame] = []  # live frames of channels not synced yet
        self.pending_resets: list[tuple[str, str]] = []
        self.dirty = False
        self.delivered = 0
        self.counted = 0  # of `delivered`, how many are in the metrics already
        self.end_reason = "client"
        self.subscriber = Subscriber(channels, queue_size, queue_bytes, expires_at)

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
        opening = b": pushsvc stream open\n" + sse.retry(self.retry_ms)
        if not sub.items:
            timer = asyncio.get_running_loop().call_later(OPEN_WAIT_SECONDS, sub.wake)
            try:
                await sub.arm()
            finally:
                timer.cancel()
        if not sub.items:
            return opening, False
        chunk, done = await self._next_from_queue()
        return (opening + chunk if chunk is not None else opening), done

    async def next_chunk(self) -> tuple[bytes | None, bool]:
        """The next chunk of the body once something is queued (None when what was queued
        produced no bytes), and whether the stream ends with it."""
        sub = self.subscriber
        while not sub.items:
            await sub.arm()
        chunk = self._live_chunk()
        if chunk is not None:
            return chunk, False
        return await self._next_from_queue()

    def _live_chunk(self) -> bytes | None:
        """The hot path, synchronous: when a synced one-channel stream has only the next
        live frames queued (no resets, no controls, no gap), their bytes as they are;
        None to let `_next_from_queue` handle the queue item by item."""
        sub = self.subscriber
        items = sub.items
        if self.multi or not self.synced[0] or self.pending_resets or self.dirty or sub.nbytes > TAKE_MAX_BYTES:
            return None
        epoch = self.epochs[0]
        seq = self.seqs[0]
        for item in items:
            if type(item) is not Frame:
                return None
            if item.epoch is None:  # foreign message: live only, no id (its `single` is its body)
                continue
            if item.epoch != epoch or item.seq != seq + 1:
                return None
            seq = item.seq
        count = len(items)
        chunk = items[0].single if count == 1 else b"".join([frame.single for frame in items])
        sub.items = []
        sub.nbytes = 0
        sub.last_write = time.monotonic()
        self.seqs[0] = seq
        self.delivered += count
        self.counted += count
        self.metrics.events_delivered += count
        return chunk

    async def _next_from_queue(self) -> tuple[bytes | None, bool]:
        items = self.subscriber.take_now()
        out: list[bytes | memoryview] = []
        final = await self._handle(items, out)
        self._flush(out)
        if final is not None:
            out.append(final)
        if out:
            self.subscriber.last_write = time.monotonic()
            self.metrics.events_delivered += self.delivered - self.counted
            self.counted = self.delivered
        return (b"".join(out) if out else None), final is not None

    async def _handle(self, items: list[Any], out: list[bytes | memoryview]) -> bytes | None:
        """Turn queued items into bytes; returns the final chunk when the stream must end."""
        for item in items:
            if type(item) is Frame:
                await self._on_frame(item, out)
            elif type(item) is Sync:
                await self._on_sync(item, out)
            elif item is PING:
                if not out:
                    out.append(sse.PING)
            elif item is CLOSE:
                self.end_reason = "shutdown"
                return sse.retry(jittered(self.retry_ms))
            elif item is OVERFLOW:
                self.end_reason = "slow_consumer"
                return sse.comment("closed: too slow, reconnect to resume")
            elif item is EXPIRED:
                self.end_reason = "token_expired"
                data = json.dumps({"reason": "token_expired"})
                return sse.encode_event(data, TOKEN_EXPIRED_EVENT)
            if self.end_reason == "catch_up_failed":
                return sse.retry(jittered(self.retry_ms))
        return None

    # -- positions -------------------------------------------------------------------------

    def _set(self, i: int, epoch: str | None, seq: int) -> None:
        self.epochs[i] = epoch
        self.seqs[i] = seq
        if self.multi:
            self.parts[i] = "0" if epoch is None else f"{epoch}-{seq}"

    def _stream_id(self) -> str:
        if self.multi:
            return ".".join(self.parts)
        return Position(self.epochs[0], self.seqs[0]).format()

    def _deliver(self, i: int, frame: Frame, out: list[bytes | memoryview]) -> None:
        if self.pending_resets:
            self._emit_resets(out)
        self.epochs[i] = frame.epoch
        self.seqs[i] = frame.seq
        if self.multi:
            self.parts[i] = f"{frame.epoch}-{frame.seq}"
            out.append(b"id: " + ".".join(self.parts).encode("ascii") + b"\n" + frame.body)
        else:
            out.append(frame.single)
        self.dirty = False
        self.delivered += 1

    def _flush(self, out: list[bytes | memoryview]) -> None:
        if self.pending_resets:
            self._emit_resets(out)
        elif self.dirty and all(self.synced):
            out.append(sse.id_only(self._stream_id()))
            self.dirty = False

    def _emit_resets(self, out: list[bytes | memoryview]) -> None:
        reasons = sorted({reason for _, reason in self.pending_resets})
        data = json.dumps(
            {"reason": reasons[0] if len(reasons) == 1 else reasons,
             "channels": [channel for channel, _ in self.pending_resets]},
            separators=(",", ":"),
        )
        out.append(sse.id_line(self._stream_id()) + sse.encode_event(data, RESET_EVENT))
        self.metrics.resets_sent += 1
        self.pending_resets.clear()
        self.dirty = False

    def _reset(self, i: int, reason: str, position: Position) -> None:
        self._set(i, position.epoch, position.seq)
        self.pending_resets.append((self.channels[i], reason))

    # -- items -------------------------------------------------------------------------------

    async def _on_frame(self, frame: Frame, out: list[bytes | memoryview]) -> None:
        i = self.index[frame.channel] if self.multi else 0
        if not self.synced[i]:
            if len(self.held) >= self.subscriber.max_items:  # no Sync for too long: start over
                self.held.clear()
                self.end_reason = "catch_up_failed"
                return
            self.held.append(frame)  # delivered after the coming Sync, from its position
            return
        if frame.epoch is None:  # foreign message: live only, no id
            if self.pending_resets:
                self._emit_resets(out)
            out.append(frame.body)
            self.delivered += 1
            return
        if frame.epoch == self.epochs[i]:
            if frame.seq == self.seqs[i] + 1:
                self._deliver(i, frame, out)
                return
            if frame.seq <= self.seqs[i]:
                return
        elif frame.seq == 1 and self.epochs[i] is None:
            # "0" = the channel had no history; seq 1 of a new epoch is its very first event.
            self._deliver(i, frame, out)
            return
        await self._catch_up(i, out, Position(frame.epoch, frame.seq - 1))
        if frame.epoch == self.epochs[i] and frame.seq == self.seqs[i] + 1:
            self._deliver(i, frame, out)

    async def _on_sync(self, item: Sync, out: list[bytes | memoryview]) -> None:
        i = self.index[item.channel] if self.multi else 0
        first = not self.synced[i]
        self.synced[i] = True
        target = item.position
        if first:
            self.dirty = True  # once every channel is synced, the stream states its position
        if first and (self.fresh or self.unreadable):
            if self.unreadable:
                self._reset(i, "unreadable_id", target)
            else:
                self._set(i, target.epoch, target.seq)
        elif target.epoch != self.epochs[i] or target.seq > self.seqs[i]:
            await self._catch_up(i, out, target)
        if first and self.held:
            held = [frame for frame in self.held if frame.channel == item.channel]
            self.held = [frame for frame in self.held if frame.channel != item.channel]
            for frame in held:
                await self._on_frame(frame, out)

    async def _catch_up(self, i: int, out: list[bytes | memoryview], need: Position) -> None:
        """Replay what the stream missed on channel i, or reset it; `need` is a position
        known to exist (a read must reach it to be of use)."""
        channel = self.channels[i]
        epoch, seq = self.epochs[i], self.seqs[i]
        try:
            history = await self.hub.history(channel, seq if epoch is not None else 0, need)
        except BrokerUnavailable as exc:
            # End the stream: the browser reconnects with its last id and nothing is lost.
            self.metrics.catch_up_failures += 1
            self.end_reason = "catch_up_failed"
            log.warning("catch-up failed", extra={"channel": channel, "error": str(exc)})
            return
        current = Position(history.epoch, history.last_seq)
        if history.epoch is None:
            if epoch is not None:
                self._reset(i, "history_lost", current)
            return
        if epoch is None:
            complete = history.first_seq == 1
        elif epoch != history.epoch:
            self._reset(i, "history_lost", current)
            return
        else:
            if seq >= history.last_seq:
                return
            complete = history.first_seq is not None and history.first_seq <= seq + 1
        if not complete:
            self._reset(i, "too_old", current)
            return
        replayed = 0
        for entry_seq, payload in history.entries:
            if entry_seq <= self.seqs[i]:
                continue
            try:
                frame = parse_message(channel, payload)
            except EventError:
                self._set(i, history.epoch, entry_seq)
                continue
            self._deliver(i, frame, out)
            replayed += 1
        if self.epochs[i] != history.epoch:  # nothing readable was replayed
            self._set(i, history.epoch, history.last_seq)
            self.dirty = True
        self.metrics.events_replayed += replayed
