"""Publish from backend code straight into Redis -- no HTTP hop.

    from pushsvc.publisher import publish
    publish("sse", {"question": "which?", "value": "Python"}, type="new_answers")

Events go through the same atomic Lua step as ``POST /publish`` (history + live), so they
get ids and are replayed on reconnect.  The Redis URL comes from ``PUSHSVC_REDIS_URL``
unless a `url` or a `client` is given; on Redis Cluster pass `cluster_nodes=` (seed URLs) or
set ``PUSHSVC_REDIS_CLUSTER_NODES``: each channel's copy of an event is then one script call
on its channel's shard (``SPUBLISH``), as the service does.  History size and TTL come from
``PUSHSVC_HISTORY_SIZE`` / ``PUSHSVC_HISTORY_TTL_SECONDS`` (defaults 1000 / 3600) and must
match the service's.  Right after a cluster failover a call may be answered "pending"
until a pushsvc service has recorded whether the failover lost writes: the publisher retries
it (at most `PENDING_SECONDS`), so a publish then takes a little longer, never resets a
channel that a planned failover kept intact.

Every event goes through the same validation as ``POST /publish`` (`events.event_from_json`:
size ``PUSHSVC_MAX_EVENT_BYTES``, nesting depth, channel count, reserved types, retry up to
``PUSHSVC_MAX_RETRY_MS``); a bad one raises `EventError` before anything is sent.  Pass
``idempotency_key=`` to make a publish safe to repeat within ``PUSHSVC_IDEMPOTENCY_SECONDS``
(the key's scope is the publisher's own, ``scope="publisher"`` unless given; the service's
HTTP scopes never meet it).  Without a key, each call still carries an internal token, so
redis-py's own retry of a call never stores it twice.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster

from .broker import new_epoch
from .broker.failover import GRACE_SECONDS
from .broker.scripts import (
    PUBLISH_LUA,
    Idempotency,
    IdempotencyConflict,
    calls_for,
    cluster_calls_for,
    is_pending,
    publish_lua,
    read_replies,
)
from .config import Settings
from .events import Event, EventError, Limits, check_idempotency_key, event_from_json

__all__ = ["AsyncPublisher", "EventError", "IdempotencyConflict", "Publisher", "apublish", "publish"]

DEFAULT_SCOPE = "publisher"


def _url(url: str | None) -> str:
    resolved = url or os.environ.get("PUSHSVC_REDIS_URL")
    if not resolved:
        raise ValueError("no Redis URL: pass url=... or set PUSHSVC_REDIS_URL")
    return resolved


CLUSTER_PUBLISH_LUA = publish_lua("SPUBLISH", guard_failover=True)
#: On a cluster, how long a call the failover guard answers "pending" is retried (the
#: shard's master just changed and no verdict on its failover is recorded yet).
PENDING_SECONDS = GRACE_SECONDS + 2.0


def _cluster_seeds(url: str | None, client: object, cluster_nodes: str | Sequence[str] | None) -> list[str]:
    """Seed URLs when publishing to a cluster: explicit `cluster_nodes`, else (with neither
    `url` nor `client`) ``PUSHSVC_REDIS_CLUSTER_NODES``."""
    if cluster_nodes is None:
        if url is not None or client is not None:
            return []
        cluster_nodes = os.environ.get("PUSHSVC_REDIS_CLUSTER_NODES", "")
    if isinstance(cluster_nodes, str):
        cluster_nodes = cluster_nodes.split(",")
    return [seed.strip() for seed in cluster_nodes if seed.strip()]


#: TLS options a ``rediss://`` seed may carry in its query (as for a single Redis URL).
_TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")


def _cluster_options(seeds: list[str]) -> dict[str, Any]:
    """Credentials and TLS options of the first seed, for every node."""
    first = urlsplit(seeds[0])
    options: dict[str, Any] = dict(
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        ssl=first.scheme == "rediss",
    )
    if first.scheme == "rediss" and first.query:
        parsed = redis.connection.parse_url(seeds[0])  # type: ignore[no-untyped-call]
        options.update({name: parsed[name] for name in _TLS_OPTIONS if name in parsed})
    return options


def _startup(seed: str) -> tuple[str, int]:
    parts = urlsplit(seed)
    return parts.hostname or "127.0.0.1", parts.port or 6379


class _Base:
    def __init__(self, history_size: int | None, history_ttl_seconds: int | None, scope: str) -> None:
        defaults = Settings.from_env()
        self.history_size = defaults.history_size if history_size is None else history_size
        self.history_ttl_seconds = (
            defaults.history_ttl_seconds if history_ttl_seconds is None else history_ttl_seconds
        )
        self.limits = Limits(defaults.max_event_bytes, defaults.max_retry_ms)
        self.window_seconds = defaults.idempotency_seconds
        self.scope = "p:" + check_idempotency_key(scope)
        self.cluster = False

    def _event(
        self, channel: str | list[str], data: Any, type: str | None, retry: int | None,
        idempotency_key: str | None,
    ) -> tuple[Event, Idempotency | None]:
        fields: dict[str, Any] = {"channel": channel, "data": data}
        if type is not None:
            fields["type"] = type
        if retry is not None:
            fields["retry"] = retry
        event: Event = event_from_json(fields, self.limits)
        idem = None
        if idempotency_key is not None:
            idem = Idempotency(self.scope, check_idempotency_key(idempotency_key), self.window_seconds)
        return event, idem

    def _calls(
        self, channel: str | list[str], data: Any, type: str | None, retry: int | None,
        idempotency_key: str | None,
    ) -> list[tuple[list[str], list[Any]]]:
        """The script calls of one event: one (all channels) on a single Redis, one per
        channel on a cluster."""
        event, idem = self._event(channel, data, type, retry, idempotency_key)
        if self.cluster:
            (per_channel,) = cluster_calls_for(
                [event], idem, self.history_size, self.history_ttl_seconds, new_epoch
            )
            return [call for _, call in per_channel]
        return calls_for([event], idem, self.history_size, self.history_ttl_seconds, new_epoch)


def _ids(replies: list[Any]) -> list[str]:
    if any(is_pending(reply) for reply in replies):
        raise redis.exceptions.TryAgainError("redis cluster: no failover verdict in time; nothing was stored")
    return [i for ids in read_replies(replies)[0] for i in ids]


class Publisher(_Base):
    """Synchronous publisher for Flask, Django, Celery workers, scripts."""

    def __init__(
        self, url: str | None = None, client: redis.Redis | None = None,
        history_size: int | None = None, history_ttl_seconds: int | None = None,
        scope: str = DEFAULT_SCOPE, cluster_nodes: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(history_size, history_ttl_seconds, scope)
        seeds = _cluster_seeds(url, client, cluster_nodes)
        self.client: redis.Redis | redis.cluster.RedisCluster
        if seeds:
            self.cluster = True
            self.client = redis.cluster.RedisCluster(
                startup_nodes=[
                    redis.cluster.ClusterNode(*_startup(seed)) for seed in seeds  # type: ignore[no-untyped-call]
                ],
                **_cluster_options(seeds),
            )
        else:
            self.client = client if client is not None else redis.Redis.from_url(_url(url))
        self._script = self.client.register_script(CLUSTER_PUBLISH_LUA if self.cluster else PUBLISH_LUA)

    def publish(
        self, channel: str | list[str], data: Any, type: str | None = None, retry: int | None = None,
        idempotency_key: str | None = None,
    ) -> list[str]:
        """Publish one event; returns its id on each channel (the original ids when
        `idempotency_key` was used before; IdempotencyConflict for another event)."""
        replies = []
        for keys, args in self._calls(channel, data, type, retry, idempotency_key):
            deadline = time.monotonic() + PENDING_SECONDS
            reply = self._script(keys=keys, args=args)
            while is_pending(reply) and time.monotonic() < deadline:  # a failover verdict is coming
                time.sleep(0.02)
                reply = self._script(keys=keys, args=args)
            replies.append(reply)
        return _ids(replies)

    def close(self) -> None:
        self.client.close()


class AsyncPublisher(_Base):
    """asyncio publisher (redis.asyncio)."""

    def __init__(
        self, url: str | None = None, client: aioredis.Redis | None = None,
        history_size: int | None = None, history_ttl_seconds: int | None = None,
        scope: str = DEFAULT_SCOPE, cluster_nodes: str | Sequence[str] | None = None,
    ) -> None:
        super().__init__(history_size, history_ttl_seconds, scope)
        seeds = _cluster_seeds(url, client, cluster_nodes)
        self.client: aioredis.Redis | aiocluster.RedisCluster
        if seeds:
            self.cluster = True
            self.client = aiocluster.RedisCluster(
                startup_nodes=[aiocluster.ClusterNode(*_startup(seed)) for seed in seeds], **_cluster_options(seeds)
            )
        else:
            self.client = client if client is not None else aioredis.Redis.from_url(_url(url))
        self._script = self.client.register_script(CLUSTER_PUBLISH_LUA if self.cluster else PUBLISH_LUA)

    async def publish(
        self, channel: str | list[str], data: Any, type: str | None = None, retry: int | None = None,
        idempotency_key: str | None = None,
    ) -> list[str]:
        replies = []
        for keys, args in self._calls(channel, data, type, retry, idempotency_key):
            deadline = time.monotonic() + PENDING_SECONDS
            reply = await self._script(keys=keys, args=args)
            while is_pending(reply) and time.monotonic() < deadline:  # a failover verdict is coming
                await asyncio.sleep(0.02)
                reply = await self._script(keys=keys, args=args)
            replies.append(reply)
        return _ids(replies)

    async def aclose(self) -> None:
        await self.client.aclose()


_default: Publisher | None = None


def publish(
    channel: str | list[str], data: Any, type: str | None = None, retry: int | None = None,
    idempotency_key: str | None = None,
) -> list[str]:
    """Publish with a process-wide `Publisher` on ``PUSHSVC_REDIS_URL``."""
    global _default
    if _default is None:
        _default = Publisher()
    return _default.publish(channel, data, type=type, retry=retry, idempotency_key=idempotency_key)


async def apublish(
    channel: str | list[str], data: Any, type: str | None = None, retry: int | None = None,
    *, url: str | None = None, idempotency_key: str | None = None,
) -> list[str]:
    """One-shot async publish (opens and closes a client); keep an `AsyncPublisher` for many."""
    publisher = AsyncPublisher(url)
    try:
        return await publisher.publish(channel, data, type=type, retry=retry, idempotency_key=idempotency_key)
    finally:
        await publisher.aclose()
