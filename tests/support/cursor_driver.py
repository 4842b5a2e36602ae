"""A synchronous stand-in for the broker and the session, to drive a `Cursor` alone.

`Store` keeps channels as the brokers do (epoch, dense sequence, capped history) and
answers history reads at once; `Driver` plays `StreamSession`'s part: a queue of items,
one history page per chunk, chunks parsed as a browser would (WHATWG rules).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from pushsvc.broker import History
from pushsvc.cursor import Cursor, End, ReadHistory, Sync
from pushsvc.events import Frame, parse_message, seal, wire_prefix
from pushsvc.metrics import Metrics
from pushsvc.resume import EMPTY, Position

from .whatwg import Event, Parser

_epochs = (f"ep{n:06d}" for n in itertools.count(1))


def message(data: str, seq: int, epoch: str) -> bytes:
    return seal(wire_prefix(data, None, None), seq, epoch)


def frame(channel: str, epoch: str, seq: int, data: str, eid: str | None = None) -> Frame:
    return dataclasses.replace(parse_message(channel, message(data, seq, epoch)), eid=eid)


@dataclass
class Channel:
    epoch: str | None = None
    seq: int = 0
    entries: list[tuple[int, bytes, str | None]] = field(default_factory=list)  # (seq, payload, eid)


class Store:
    """Channels with history, as a broker keeps them (the eid rides beside the payload
    until the wire format carries it)."""

    def __init__(self, cap: int = 1000) -> None:
        self.cap = cap
        self.channels: dict[str, Channel] = {}
        self.reads = 0

    def channel(self, name: str) -> Channel:
        return self.channels.setdefault(name, Channel())

    def publish(self, name: str, data: str, eid: str | None = None) -> Frame:
        ch = self.channel(name)
        if ch.epoch is None:
            ch.epoch = next(_epochs)
        ch.seq += 1
        payload = message(data, ch.seq, ch.epoch)
        if eid is not None:
            EIDS[payload] = eid
        ch.entries.append((ch.seq, payload, eid))
        del ch.entries[:max(0, len(ch.entries) - self.cap)]
        return frame(name, ch.epoch, ch.seq, data, eid)

    def trim(self, name: str, keep: int) -> None:
        ch = self.channel(name)
        del ch.entries[:max(0, len(ch.entries) - keep)]

    def lose(self, name: str) -> None:
        """History lost (Redis restarted empty, key expired): the next publish starts a new epoch."""
        self.channels[name] = Channel()

    def position(self, name: str) -> Position:
        ch = self.channel(name)
        return EMPTY if ch.epoch is None else Position(ch.epoch, ch.seq)

    def history(self, name: str, after_seq: int, limit: int | None) -> History:
        self.reads += 1
        ch = self.channel(name)
        if ch.epoch is None:
            return History(None, 0, None, [])
        first = ch.entries[0][0] if ch.entries else None
        after = [(seq, payload) for seq, payload, _ in ch.entries if seq > after_seq]
        return History(ch.epoch, ch.seq, first, after if limit is None else after[:limit])


#: eid of each stored payload: history frames get theirs through `parse_with_eids` (the
#: cursor parses history entries; until the wire format carries eids, tests patch it in).
EIDS: dict[bytes, str] = {}


def parse_with_eids(channel: str, payload: bytes, trusted: bool = True) -> Frame:
    parsed = parse_message(channel, payload, trusted)
    eid = EIDS.get(payload)
    return parsed if eid is None else dataclasses.replace(parsed, eid=eid)


@dataclass
class Driver:
    """One connection: the cursor, its queue, what the client parsed."""

    cursor: Cursor
    store: Store
    queue: list[Any] = field(default_factory=list)
    parser: Parser = field(default_factory=Parser)
    events: list[Event] = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    ended: End | None = None
    shared_slack: int = 0  # pages start this many entries early, as a read shared with other streams may

    @classmethod
    def open(cls, store: Store, channels: tuple[str, ...], resume: list[Position] | None = None,
             unreadable: bool = False, chunk_bytes: int = 256 * 1024, max_items: int = 1000,
             max_bytes: int = 1 << 20, metrics: Metrics | None = None) -> Driver:
        cursor = Cursor(channels, resume, unreadable, 3000, metrics or Metrics(), max_items, max_bytes, chunk_bytes)
        return cls(cursor, store)

    def sync(self, name: str) -> None:
        self.queue.append(Sync(name, self.store.position(name)))

    def chunk(self) -> bool:
        """One chunk as `StreamSession` makes it; False when there was nothing to do."""
        cursor = self.cursor
        if self.ended is not None or (cursor.reading is None and not self.queue):
            return False
        out: list[bytes | memoryview] = []
        step = cursor.reading
        if step is None:
            items, self.queue = self.queue, []
            for k, item in enumerate(items):
                step = cursor.feed(item, out)
                if step is not None:
                    if type(step) is ReadHistory:
                        self.queue[:0] = items[k + 1:]
                    break
        if type(step) is ReadHistory:
            slack = min(self.shared_slack, step.after_seq)
            page = self.store.history(step.channel, step.after_seq - slack, step.limit + slack)
            step = cursor.on_history(page, out, cursor.chunk_bytes - sum(len(p) for p in out))
        if type(step) is End:
            self.ended = step
            out.append(step.final)
        else:
            cursor.flush(out)
        data = b"".join(out)
        self.chunks.append(data)
        self.events += self.parser.feed(data)
        return True

    def drain(self, limit: int = 10_000) -> Driver:
        for _ in range(limit):
            if not self.chunk():
                return self
        raise AssertionError("the cursor never settled")

    @property
    def last_id(self) -> str:
        return self.parser.last_event_id
