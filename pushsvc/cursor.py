"""The stream cursor: what one stream sends and when, as a pure, synchronous state machine.

A `Cursor` holds a stream's position per channel (epoch, seq), which channels are synced,
the resets it owes and the catch-up in progress.  Its methods take what happened -- a live
`Frame`, a `Sync` (the hub confirmed a channel at position P), a history page, a `Control`
item (ping, close, overflow, expiry) -- append the bytes to send to `out`, and return what
the driver must do next: nothing, `ReadHistory` (read one page, then call `on_history`) or
`End` (send its final bytes and end the stream).  No I/O and no asyncio here:
`session.StreamSession` drives it with a hub and a broker; tests drive it alone.

Rules it keeps (the delivery guarantee):

* per channel, events leave in sequence order, each once: a live frame that directly
  follows the position is sent; one at or below it is a duplicate and dropped; one after a
  gap (or of a new epoch) starts a catch-up from history up to the frame;
* a catch-up reads history in pages, one page per chunk and at most about `chunk_bytes`
  per chunk, so a stream that replays a long history holds one chunk at a time;
* when history cannot fill a gap the channel gets a reset (`too_old`, `history_lost`,
  `unreadable_id`) to the channel's current position, and live events after it;
* an event published to several channels (same `Frame.eid`) is sent once per stream: the
  first copy is sent, a later copy on another channel only advances that channel's
  position, when it arrives (never earlier, so an older event of that channel is never
  skipped).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from . import sse
from .broker import History
from .events import EventError, Frame, parse_message
from .metrics import Metrics
from .resume import Position

RESET_EVENT = "pushsvc.reset"
TOKEN_EXPIRED_EVENT = "pushsvc.token_expired"

#: Entries in the first history page of a catch-up; later pages are sized from the entries
#: seen so far to fill about one chunk.
FIRST_PAGE = 8
MAX_PAGE = 500
#: Event identities a multi-channel stream remembers to skip the other channels' copies
#: (replay of one channel's whole history happens before the next channel's).
RECENT_EIDS = 1024

_ONE_CHANNEL: dict[str, int] = {}  # shared, never written: a one-channel stream's index is always 0


def jittered(ms: int) -> int:
    return int(ms * random.uniform(0.8, 1.2))


class Control:
    """A control item in a subscriber queue."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


PING = Control("ping")
CLOSE = Control("close")  # server draining: send a jittered retry and end
OVERFLOW = Control("overflow")  # slow consumer: end now
EXPIRED = Control("expired")  # subscriber token expired
ENDING = (CLOSE, OVERFLOW, EXPIRED)


@dataclass(slots=True)
class Sync:
    """The hub's subscription to `channel` is confirmed: live delivery continues right after
    `position` (the stream needs history up to it, no further)."""

    channel: str
    position: Position


@dataclass(slots=True, frozen=True)
class ReadHistory:
    """Read `channel`'s history after `after_seq`, at most `limit` entries; `need` is a
    position known to exist (a shared read must reach it to serve this one)."""

    channel: str
    after_seq: int
    need: Position
    limit: int


@dataclass(slots=True, frozen=True)
class End:
    """End the stream with `final` as its last bytes; `reason` is for logs and metrics."""

    reason: str
    final: bytes


Step = ReadHistory | End


class _CatchUp:
    __slots__ = ("entry_bytes", "i", "need", "read", "trigger")

    def __init__(self, i: int, need: Position, trigger: Frame | None, read: ReadHistory) -> None:
        self.i = i
        self.need = need
        self.trigger = trigger  # the live frame that showed the gap: sent after the catch-up
        self.read = read
        self.entry_bytes = 0  # the largest entry seen, to size the next page


# Stream modes: how a channel's first Sync sets its position.
FRESH, RESUME, UNREADABLE = 0, 1, 2


class Cursor:
    """One stream's positions and catch-up; see the module docstring."""

    __slots__ = (
        "catching", "channels", "chunk_bytes", "delivered", "dirty", "epochs", "held", "held_bytes", "index",
        "max_bytes", "max_items", "metrics", "mode", "parts", "recent", "resets", "retry_ms", "seqs", "synced",
    )

    def __init__(
        self,
        channels: tuple[str, ...],
        resume: list[Position] | None,
        unreadable_id: bool,
        retry_ms: int,
        metrics: Metrics,
        max_items: int,
        max_bytes: int,
        chunk_bytes: int,
    ) -> None:
        self.channels = channels  # sorted, unique
        count = len(channels)
        multi = count > 1
        self.index = {name: i for i, name in enumerate(channels)} if multi else _ONE_CHANNEL
        self.epochs: list[str | None] = [p.epoch for p in resume] if resume else [None] * count
        self.seqs: list[int] = [p.seq for p in resume] if resume else [0] * count
        self.parts: list[str] | None = (  # the id's parts: multi-channel streams only
            [Position(e, s).format() for e, s in zip(self.epochs, self.seqs, strict=True)] if multi else None
        )
        self.recent: dict[str, None] | None = None  # eids sent (multi-channel streams, once one has an eid)
        self.synced = [False] * count
        self.mode = UNREADABLE if unreadable_id else RESUME if resume is not None else FRESH
        self.held: list[Frame] | None = None  # live frames of channels not synced yet
        self.held_bytes = 0
        self.resets: list[tuple[str, str]] | None = None  # (channel, reason) owed to the client
        self.catching: _CatchUp | None = None
        self.dirty = False  # the position moved without an id line: state it at the chunk's end
        self.delivered = 0
        self.retry_ms = retry_ms
        self.metrics = metrics
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.chunk_bytes = chunk_bytes

    # -- what the driver asks ----------------------------------------------------------------

    @property
    def reading(self) -> ReadHistory | None:
        """The history page to read now (then `on_history`), if a catch-up is in progress."""
        catching = self.catching
        return None if catching is None else catching.read

    def position(self, i: int) -> Position:
        return Position(self.epochs[i], self.seqs[i])

    def stream_id(self) -> str:
        if self.parts is not None:
            return ".".join(self.parts)
        return Position(self.epochs[0], self.seqs[0]).format()

    # -- the hot path -------------------------------------------------------------------------

    def take_live(self, items: list[Any]) -> bytes | None:
        """When a synced one-channel stream has only the next live frames queued (no reset,
        control or gap), their bytes as they are, positions advanced; else None (feed the
        items one by one)."""
        if self.parts is not None or not self.synced[0] or self.resets or self.dirty or self.catching:
            return None
        epoch = self.epochs[0]
        seq = self.seqs[0]
        if epoch is None:  # nothing of the channel yet: a frame with a position is a new epoch
            for item in items:
                if type(item) is not Frame or item.epoch is not None:
                    return None
        else:
            # Once per frame per stream: one test for the usual frame (the next of this
            # epoch); a foreign message (no epoch: live only, no id, its `single` is its body)
            # is skipped; anything else goes item by item.
            frame = Frame
            for item in items:
                seq += 1
                if type(item) is not frame or item.seq != seq or item.epoch != epoch:
                    if type(item) is not frame or item.epoch is not None:
                        return None
                    seq -= 1
        count = len(items)
        chunk = items[0].single if count == 1 else b"".join([frame.single for frame in items])
        self.seqs[0] = seq
        self.delivered += count
        return chunk

    def take_run(self, first: Frame, last: Frame, count: int) -> bool:
        """`take_live` for a run already checked by its channel's log (`ChannelLog.run`: one
        epoch, consecutive seqs): True, positions advanced, when the run is exactly what
        comes next for this synced one-channel stream."""
        if self.parts is not None or not self.synced[0] or self.resets or self.dirty or self.catching:
            return False
        if first.epoch != self.epochs[0] or first.seq != self.seqs[0] + 1:
            return False
        self.seqs[0] = last.seq
        self.delivered += count
        return True

    # -- items --------------------------------------------------------------------------------

    def feed(self, item: Any, out: list[bytes | memoryview]) -> Step | None:
        """One queued item (Frame, Sync or Control)."""
        if type(item) is Frame:
            return self.on_frame(item, out)
        if type(item) is Sync:
            return self.on_sync(item, out)
        return self.on_control(item, out)

    def on_frame(self, frame: Frame, out: list[bytes | memoryview]) -> Step | None:
        i = self.index[frame.channel] if self.parts is not None else 0
        if not self.synced[i]:
            return self._hold(frame)
        if frame.epoch is None:  # foreign message: live only, no id
            self._emit_resets(out)
            out.append(frame.body)
            self.delivered += 1
            return None
        epoch, seq = self.epochs[i], self.seqs[i]
        if frame.epoch == epoch:
            if frame.seq == seq + 1:
                self._deliver(i, frame, out)
                return None
            if frame.seq <= seq:
                return None  # already sent (from history, or a duplicate)
        elif frame.seq == 1 and epoch is None:
            # "0" = the channel had no history; seq 1 of a new epoch is its very first event.
            self._deliver(i, frame, out)
            return None
        return self._begin(i, Position(frame.epoch, frame.seq - 1), frame)

    def on_sync(self, item: Sync, out: list[bytes | memoryview]) -> Step | None:
        i = self.index[item.channel] if self.parts is not None else 0
        first = not self.synced[i]
        self.synced[i] = True
        target = item.position
        step: Step | None = None
        if first:
            self.dirty = True  # once every channel is synced, the stream states its position
        if first and self.mode != RESUME:
            if self.mode == UNREADABLE:
                self._reset(i, "unreadable_id", target)
            else:
                self._set(i, target.epoch, target.seq)
        elif target.epoch != self.epochs[i] or target.seq != self.seqs[i]:
            # Behind: catch up.  Ahead of the hub's position on a first sync: a read tells
            # whether the id is beyond the channel's sequence (unreadable) or just recent.
            if target.epoch != self.epochs[i] or target.seq > self.seqs[i] or first:
                step = self._begin(i, target, None)
        if step is None and first and self.held:
            return self._release_held(out)
        return step

    def on_control(self, item: Any, out: list[bytes | memoryview]) -> End | None:
        if item is PING:
            if not out:
                out.append(sse.PING)
            return None
        self.catching = None  # every other control ends the stream, a catch-up with it
        if item is CLOSE:
            return End("shutdown", sse.retry(jittered(self.retry_ms)))
        if item is OVERFLOW:
            return End("slow_consumer", sse.comment("closed: too slow, reconnect to resume"))
        if item is EXPIRED:
            return End("token_expired", sse.encode_event(json.dumps({"reason": "token_expired"}),
                                                         TOKEN_EXPIRED_EVENT))
        return None

    def read_failed(self) -> End:
        """The history read failed: end the stream; the browser reconnects with its last id
        and nothing is lost."""
        self.catching = None
        return End("catch_up_failed", sse.retry(jittered(self.retry_ms)))

    def flush(self, out: list[bytes | memoryview]) -> None:
        """End of a chunk: send owed resets, or state a position that moved silently."""
        if self.resets:
            self._emit_resets(out)
        elif self.dirty and all(self.synced):
            out.append(sse.id_only(self.stream_id()))
            self.dirty = False

    # -- catch-up -----------------------------------------------------------------------------

    def _begin(self, i: int, need: Position, trigger: Frame | None) -> ReadHistory:
        epoch, seq = self.epochs[i], self.seqs[i]
        read = ReadHistory(self.channels[i], seq if epoch is not None else 0, need, FIRST_PAGE)
        self.catching = _CatchUp(i, need, trigger, read)
        return read

    def on_history(self, page: History, out: list[bytes | memoryview], room: int) -> Step | None:
        """One page of the history read asked for by `reading`.  Sends what it can of it
        (at least one entry, then while under `room` bytes); returns the next page to read,
        or what the catch-up's end leads to (None: feed the queue again)."""
        catching = self.catching
        assert catching is not None, "on_history without a catch-up"
        i = catching.i
        need = catching.need
        verdict = self._judge(i, page, need)
        if verdict is not None:
            self._reset(i, verdict, Position(page.epoch, page.last_seq))
            return self._finish(out)
        if self.epochs[i] == need.epoch and self.seqs[i] >= need.seq:
            return self._finish(out)  # the position was ahead of the hub's: nothing to replay
        before = self.seqs[i]
        sent = 0
        replayed = 0
        multi = self.parts is not None
        channel = self.channels[i]
        for entry_seq, payload in page.entries:
            if entry_seq <= self.seqs[i]:
                continue
            if sent and sent >= room:
                break
            catching.entry_bytes = max(catching.entry_bytes, len(payload))
            try:
                frame = parse_message(channel, payload)
            except EventError:
                self._set(i, page.epoch, entry_seq)
                self.dirty = True
                continue
            sent += len(frame.body if multi else frame.single)
            replayed += self._deliver(i, frame, out)
        self.metrics.events_replayed += replayed
        reached = self.epochs[i] == need.epoch and self.seqs[i] >= need.seq
        if reached or self.seqs[i] >= page.last_seq:
            return self._finish(out)
        if self.seqs[i] == before:  # no progress although history goes further: never loop
            self._reset(i, "too_old", Position(page.epoch, page.last_seq))
            return self._finish(out)
        limit = max(1, min(MAX_PAGE, self.chunk_bytes // max(catching.entry_bytes, 1)))
        catching.read = ReadHistory(channel, self.seqs[i], need, limit)
        return catching.read

    def _judge(self, i: int, page: History, need: Position) -> str | None:
        """Why this page cannot continue channel i's events (a reset reason), or None."""
        epoch, seq = self.epochs[i], self.seqs[i]
        if page.epoch is None:
            return None if epoch is None else "history_lost"
        if epoch is None:
            return None if page.first_seq == 1 else "too_old"
        if epoch != page.epoch:
            return "history_lost"
        if seq > page.last_seq:
            return "unreadable_id"  # an id beyond the channel's sequence was never issued
        if seq == page.last_seq or (need.epoch == epoch and seq >= need.seq):
            return None
        if page.first_seq is None or page.first_seq > seq + 1:
            return "too_old"
        return None

    def _finish(self, out: list[bytes | memoryview]) -> Step | None:
        catching = self.catching
        assert catching is not None
        self.catching = None
        i = catching.i
        frame = catching.trigger
        if frame is not None and frame.epoch == self.epochs[i] and frame.seq == self.seqs[i] + 1:
            self._deliver(i, frame, out)
        if self.held:
            return self._release_held(out)
        return None

    def _hold(self, frame: Frame) -> End | None:
        """Keep a frame of a channel not synced yet: it is sent after the coming Sync, from
        its position.  Bounded like the queue: too many means no Sync for too long."""
        held = self.held
        if held is None:
            held = self.held = []
        self.held_bytes += len(frame.single)
        held.append(frame)
        if len(held) > self.max_items or self.held_bytes > self.max_bytes:
            self.held = None
            self.held_bytes = 0
            return End("catch_up_failed", sse.retry(jittered(self.retry_ms)))
        return None

    def _release_held(self, out: list[bytes | memoryview]) -> Step | None:
        """Feed the held frames of channels now synced, in order; stop at a catch-up."""
        held = self.held
        assert held is not None
        synced = self.synced
        index = self.index
        multi = self.parts is not None
        keep = [f for f in held if not synced[index[f.channel] if multi else 0]]
        ready = [f for f in held if synced[index[f.channel] if multi else 0]]
        self.held = keep or None
        self.held_bytes = sum(len(f.single) for f in keep)
        for k, frame in enumerate(ready):
            step = self.on_frame(frame, out)
            if step is not None:
                rest = ready[k + 1:]
                if rest:
                    self.held = rest + (self.held or [])
                    self.held_bytes += sum(len(f.single) for f in rest)
                return step
        return None

    # -- positions ----------------------------------------------------------------------------

    def _set(self, i: int, epoch: str | None, seq: int) -> None:
        self.epochs[i] = epoch
        self.seqs[i] = seq
        if self.parts is not None:
            self.parts[i] = "0" if epoch is None else f"{epoch}-{seq}"

    def _deliver(self, i: int, frame: Frame, out: list[bytes | memoryview]) -> int:
        """Send a frame that directly follows channel i's position; 1 if sent, 0 if it was
        the copy of an event this stream already sent through another channel."""
        self._emit_resets(out)
        parts = self.parts
        if parts is None:
            self.epochs[0] = frame.epoch
            self.seqs[0] = frame.seq
            out.append(frame.single)
            self.dirty = False
            self.delivered += 1
            return 1
        self._set(i, frame.epoch, frame.seq)
        eid = frame.eid
        if eid is not None:
            recent = self.recent
            if recent is None:
                recent = self.recent = {}
            elif eid in recent:
                self.dirty = True  # skipped: only the position moved
                return 0
            recent[eid] = None
            if len(recent) > RECENT_EIDS:
                del recent[next(iter(recent))]
        out.append(b"id: " + ".".join(parts).encode("ascii") + b"\n" + frame.body)
        self.dirty = False
        self.delivered += 1
        return 1

    def _reset(self, i: int, reason: str, position: Position) -> None:
        self._set(i, position.epoch, position.seq)
        channel = self.channels[i]
        if self.resets is None:
            self.resets = []
        else:  # one reset per channel: the latest reason
            self.resets = [(c, r) for c, r in self.resets if c != channel]
        self.resets.append((channel, reason))

    def _emit_resets(self, out: list[bytes | memoryview]) -> None:
        """One `pushsvc.reset` per reason: its channels and the stream id from which live
        delivery continues (also its `id:` line)."""
        resets = self.resets
        if not resets:
            return
        position = self.stream_id()
        id_line = sse.id_line(position)
        by_reason: dict[str, list[str]] = {}
        for channel, reason in resets:
            by_reason.setdefault(reason, []).append(channel)
        for reason, channels in by_reason.items():
            data = json.dumps({"reason": reason, "channels": channels, "position": position},
                              separators=(",", ":"))
            out.append(id_line + sse.encode_event(data, RESET_EVENT))
        self.metrics.resets_sent += len(by_reason)
        self.resets = None
        self.dirty = False
