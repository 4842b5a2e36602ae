"""The embedded broker: one process, history in memory, the same semantics as Redis.

Used when no ``PUSHSVC_REDIS_URL`` is set (a quick start, tests); it cannot carry events
between processes, so the server refuses it with more than one worker.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..events import Event
from ..wire import EMPTY, Position, format_position, seal
from . import History, Listener, Published, new_epoch
from .scripts import Call, Idempotency, calls_for, read_replies


@dataclass(slots=True)
class _Channel:
    epoch: str
    seq: int = 0
    touched: float = field(default_factory=time.monotonic)
    entries: deque[tuple[int, bytes]] = field(default_factory=deque)


class MemoryBroker:
    name = "memory"

    def __init__(self, history_size: int = 1000, history_ttl_seconds: int = 3600) -> None:
        self.history_size = history_size
        self.history_ttl_seconds = history_ttl_seconds
        self._channels: dict[str, _Channel] = {}
        self._subscribed: set[str] = set()
        self._listener: Listener | None = None
        self._records: dict[str, tuple[float, str, dict[int, str]]] = {}  # key: (expiry, fp, ids)
        self._expiries: list[tuple[float, str]] = []  # heap of (expiry, key): forget old records

    async def start(self, listener: Listener) -> None:
        self._listener = listener

    async def stop(self) -> None:
        self._listener = None

    def status(self) -> tuple[bool, str]:
        return True, "embedded in-process broker"

    async def count_subscribers(self, channel: str, local: int) -> int:
        return local  # one process: the local count is the whole count

    def _live(self, channel: str) -> _Channel | None:
        state = self._channels.get(channel)
        if state is not None and self.history_ttl_seconds > 0:
            if time.monotonic() - state.touched > self.history_ttl_seconds:
                del self._channels[channel]
                return None
        return state

    async def publish(self, events: Sequence[Event], idempotency: Idempotency | None = None) -> Published:
        """The Redis script's steps, in Python (same calls, same records, same answers)."""
        calls = calls_for(events, idempotency, self.history_size, self.history_ttl_seconds, new_epoch)
        replies = [self._run(event, call) for event, call in zip(events, calls, strict=True)]
        ids, replayed = read_replies(replies)
        return Published(ids, replayed)

    def _run(self, event: Event, call: Call) -> tuple[int, str]:
        (record_key, *_), (fp, field, window, prefix, _, _, eid, *_) = call
        now = time.monotonic()
        while self._expiries and self._expiries[0][0] <= now:
            expiry, key = heapq.heappop(self._expiries)
            if key in self._records and self._records[key][0] == expiry:
                del self._records[key]
        record = self._records.get(record_key)
        if record is not None and record[0] <= now:
            record = None
        if record is not None:
            if record[1] != fp:
                return -1, ""
            if field in record[2]:
                return 1, record[2][field]
        else:
            record = self._records[record_key] = (now + window, fp, {})
            heapq.heappush(self._expiries, (now + window, record_key))
        ids = []
        for channel in event.channels:
            state = self._live(channel)
            if state is None:
                state = self._channels[channel] = _Channel(new_epoch())
            state.seq += 1
            state.touched = now
            message = seal(prefix, state.seq, state.epoch, eid or None)
            if self.history_size > 0:
                state.entries.append((state.seq, message))
                while len(state.entries) > self.history_size:
                    state.entries.popleft()
            ids.append(format_position(state.epoch, state.seq))
            if channel in self._subscribed and self._listener is not None:
                self._listener.on_message(channel, message, True)
        joined = record[2][field] = " ".join(ids)
        return 0, joined

    def inject(self, channel: str, payload: bytes) -> None:
        """Deliver a raw message live, as a plain Redis PUBLISH would: untrusted (no id,
        whatever members it carries), no history."""
        if channel in self._subscribed and self._listener is not None:
            self._listener.on_message(channel, payload, False)

    async def barrier(self) -> None:
        """Delivery is synchronous here: everything published is already delivered."""

    def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)
        if self._listener is not None:
            asyncio.get_running_loop().call_soon(self._confirm, channel)

    def _confirm(self, channel: str) -> None:
        if channel in self._subscribed and self._listener is not None:
            self._listener.on_subscribed(channel)

    def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def position(self, channel: str) -> Position:
        state = self._live(channel)
        return EMPTY if state is None else Position(state.epoch, state.seq)

    async def history(self, channel: str, after_seq: int, limit: int | None = None) -> History:
        state = self._live(channel)
        if state is None:
            return History(None, 0, None, [])
        retained = state.entries
        first = retained[0][0] if retained else None
        start = 0 if first is None else max(0, after_seq + 1 - first)  # sequences are dense
        stop = len(retained) if limit is None else min(len(retained), start + limit)
        return History(state.epoch, state.seq, first, [retained[k] for k in range(start, stop)])
