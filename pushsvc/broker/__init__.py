"""Brokers carry events between processes and keep each channel's history.

`Broker` is the narrow protocol the hub and the publish route use; `redis.RedisBroker` is
the production backend (`cluster.ClusterBroker` on Redis Cluster), `memory.MemoryBroker`
the embedded single-process default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..events import Event
from ..randomness import token_b32_8
from ..wire import Position, history_entry_seq, history_key, meta_key
from .scripts import Idempotency, IdempotencyConflict

__all__ = [
    "Broker", "BrokerUnavailable", "History", "Idempotency", "IdempotencyConflict", "Listener",
    "OutcomeUnknown", "Published", "create_broker", "history_key", "meta_key", "new_epoch",
]


def new_epoch() -> str:
    """8 random characters of [a-z2-7] (40 bits): cheap enough to draw one per channel."""
    return token_b32_8()


class BrokerUnavailable(Exception):
    """The broker cannot take the operation now (Redis down, paused or too slow); for a
    publish: nothing was stored."""


class OutcomeUnknown(BrokerUnavailable):
    """A publish was sent but its answer was lost (timeout, connection lost): it may or may
    not be stored.  A retry with the same idempotency key is safe."""


@dataclass(slots=True)
class Published:
    """What a publish gave: the ids per event and channel; `replayed` when the idempotency
    key had been seen (nothing new was stored for the replayed events)."""

    ids: list[list[str]]
    replayed: bool = False


@dataclass(slots=True)
class History:
    """A channel's state and (a page of) the retained entries after some sequence number."""

    epoch: str | None
    last_seq: int
    first_seq: int | None  # lowest retained sequence; None when nothing is retained
    entries: list[tuple[int, bytes]]


def queue_history_reads(pipe: Any, channel: str, after_seq: int, limit: int | None) -> None:
    """Queue a channel's history read on a Redis pipeline (meta, first entry, the entries
    after `after_seq`); `history_from_replies` reads the answers.  Shared by both Redis
    brokers (on a cluster, every key is on the channel's shard)."""
    pipe.hmget(meta_key(channel), ["epoch", "seq"])
    pipe.xrange(history_key(channel), "-", "+", count=1)
    pipe.xrange(history_key(channel), f"0-{after_seq + 1}", "+", count=limit)


def history_from_replies(replies: Sequence[Any]) -> History:
    (epoch, seq), first, entries = replies
    if epoch is None:
        return History(None, 0, None, [])
    first_seq = history_entry_seq(first[0][0]) if first else None
    retained = [(history_entry_seq(entry_id), fields[b"m"]) for entry_id, fields in entries]
    return History(_text(epoch), int(seq or 0), first_seq, retained)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class Listener(Protocol):
    def on_message(self, channel: str, payload: bytes, trusted: bool = True) -> None:
        """A message of `channel`; `trusted` when pushsvc's publish script wrote it (only
        then may it carry a position)."""

    def on_subscribed(self, channel: str) -> None:
        """The subscription is active (after the first subscribe or after a reconnect)."""

    def local_subscribers(self, channel: str) -> int:
        """Streams of this process subscribed to `channel` (for `count_subscribers`)."""


class Broker(Protocol):
    name: str

    async def start(self, listener: Listener) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, events: Sequence[Event], idempotency: Idempotency | None = None) -> Published:
        """Store and publish, in order, at most once per idempotency key (and never twice
        for a retry of the broker's own); IdempotencyConflict, BrokerUnavailable (nothing
        stored) or OutcomeUnknown."""

    def subscribe(self, channel: str) -> None: ...

    def unsubscribe(self, channel: str) -> None: ...

    async def position(self, channel: str) -> Position: ...

    async def barrier(self) -> None:
        """Return once every message published before the call has reached the listener."""

    async def history(self, channel: str, after_seq: int, limit: int | None = None) -> History:
        """The channel's epoch, last and first retained sequence, and up to `limit` retained
        entries after `after_seq` (all of them when `limit` is None), oldest first."""

    def status(self) -> tuple[bool, str]:
        """(ready, reason) for /readyz."""

    async def count_subscribers(self, channel: str, local: int) -> int:
        """Streams subscribed to `channel` in every process; `local` is this process's count."""


def create_broker(redis_url: str | None, cluster_nodes: Sequence[str] = (), **options: object) -> Broker:
    if cluster_nodes:
        from .cluster import ClusterBroker

        return ClusterBroker(cluster_nodes, **options)  # type: ignore[arg-type]
    if redis_url is None:
        from .memory import MemoryBroker

        return MemoryBroker(**options)  # type: ignore[arg-type]
    from .redis import RedisBroker

    return RedisBroker(redis_url, **options)  # type: ignore[arg-type]
