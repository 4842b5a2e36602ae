"""Publish from backend code straight into Redis -- no HTTP hop.

    from pushsvc.publisher import publish
    publish("sse", {"question": "which?", "value": "Python"}, type="new_answers")

Events go through the same atomic Lua step as ``POST /publish`` (history + live), so they
get ids and are replayed on reconnect.  The Redis URL comes from ``PUSHSVC_REDIS_URL``
unless a `url` or a `client` is given.  History size and TTL come from
``PUSHSVC_HISTORY_SIZE`` / ``PUSHSVC_HISTORY_TTL_SECONDS`` (defaults 1000 / 3600) and must
match the service's.
"""

from __future__ import annotations

import os
from typing import Any

import redis
import redis.asyncio as aioredis

from .broker import new_epoch
from .broker.scripts import PUBLISH_LUA, position_id, publish_args
from .config import Settings
from .events import Event, EventError, check_channel, check_event_type, check_retry


def _url(url: str | None) -> str:
    resolved = url or os.environ.get("PUSHSVC_REDIS_URL")
    if not resolved:
        raise ValueError("no Redis URL: pass url=... or set PUSHSVC_REDIS_URL")
    return resolved


def _event(channel: str | list[str], data: Any, type: str | None, retry: int | None) -> Event:
    channels = [channel] if isinstance(channel, str) else list(channel)
    if not channels:
        raise EventError("invalid_channel", "at least one channel is required")
    event = Event(
        tuple(dict.fromkeys(check_channel(c) for c in channels)),
        data, check_event_type(type), check_retry(retry),
    )
    event.message_prefix()  # raises ValueError for data that is not JSON-serialisable
    return event


class _Base:
    def __init__(self, history_size: int | None, history_ttl_seconds: int | None) -> None:
        defaults = Settings.from_env()
        self.history_size = defaults.history_size if history_size is None else history_size
        self.history_ttl_seconds = (
            defaults.history_ttl_seconds if history_ttl_seconds is None else history_ttl_seconds
        )

    def _calls(self, event: Event) -> list[tuple[list[str], list[Any]]]:
        prefix = event.message_prefix()
        return [
            publish_args(channel, prefix, self.history_size, self.history_ttl_seconds, new_epoch())
            for channel in event.channels
        ]


class Publisher(_Base):
    """Synchronous publisher for Flask, Django, Celery workers, scripts."""

    def __init__(
        self, url: str | None = None, client: redis.Redis | None = None,
        history_size: int | None = None, history_ttl_seconds: int | None = None,
    ) -> None:
        super().__init__(history_size, history_ttl_seconds)
        self.client = client if client is not None else redis.Redis.from_url(_url(url))
        self._script = self.client.register_script(PUBLISH_LUA)

    def publish(
        self, channel: str | list[str], data: Any, type: str | None = None, retry: int | None = None
    ) -> list[str]:
        """Publish one event; returns its id on each channel."""
        return [
            position_id(self._script(keys=keys, args=args))
            for keys, args in self._calls(_event(channel, data, type, retry))
        ]

    def close(self) -> None:
        self.client.close()


class AsyncPublisher(_Base):
    """asyncio publisher (redis.asyncio)."""

    def __init__(
        self, url: str | None = None, client: aioredis.Redis | None = None,
        history_size: int | None = None, history_ttl_seconds: int | None = None,
    ) -> None:
        super().__init__(history_size, history_ttl_seconds)
        self.client = client if client is not None else aioredis.Redis.from_url(_url(url))
        self._script = self.client.register_script(PUBLISH_LUA)

    async def publish(
        self, channel: str | list[str], data: Any, type: str | None = None, retry: int | None = None
    ) -> list[str]:
        return [
            position_id(await self._script(keys=keys, args=args))
            for keys, args in self._calls(_event(channel, data, type, retry))
        ]

    async def aclose(self) -> None:
        await self.client.aclose()


_default: Publisher | None = None


def publish(
    channel: str | list[str], data: Any, type: str | None = None, retry: int | None = None
) -> list[str]:
    """Publish with a process-wide `Publisher` on ``PUSHSVC_REDIS_URL``."""
    global _default
    if _default is None:
        _default = Publisher()
    return _default.publish(channel, data, type=type, retry=retry)


async def apublish(
    channel: str | list[str], data: Any, type: str | None = None, retry: int | None = None,
    *, url: str | None = None,
) -> list[str]:
    """One-shot async publish (opens and closes a client); keep an `AsyncPublisher` for many."""
    publisher = AsyncPublisher(url)
    try:
        return await publisher.publish(channel, data, type=type, retry=retry)
    finally:
        await publisher.aclose()
