"""The Redis broker: one pub/sub connection per process, history in capped streams.

Keys (every key of a channel carries the same hash tag, ready for Redis Cluster):

* ``pushsvc:{<channel>}:meta`` -- hash ``epoch`` (random token), ``seq`` (last sequence);
* ``pushsvc:{<channel>}:history`` -- stream of the last ``PUSHSVC_HISTORY_SIZE`` events,
  entry id ``0-<seq>``, field ``m`` = the message exactly as published.

Both expire after ``PUSHSVC_HISTORY_TTL_SECONDS`` without a publish.  pushsvc's publish
script publishes on the internal pub/sub channel ``pushsvc:{<channel>}:live``; this process
subscribes to it *and* to the public name ``<channel>``, so a plain ``PUBLISH sse '{...}'``
(flask-sse, redis-cli) reaches ``/stream?channel=sse`` too -- as an untrusted message (no
id, whatever it carries).  A channel counts as subscribed once both are confirmed.  Names
and formats: `pushsvc.wire`.

Publishing: every request is one script call per event (`scripts.py`), each carrying an
idempotency record, so any retry is harmless.  A failure before the pipeline is sent (no
connection from the pool, cannot connect) is `BrokerUnavailable` (nothing stored); after
it was sent, `OutcomeUnknown`.

The pub/sub connection is driven by hand (`pubsub.PubSubLoop`, not redis-py's `PubSub`,
which re-subscribes silently after a reconnect and so hides gaps); every confirmation is
reported to the hub, which resynchronises the channel's streams from history -- so a gap is
healed, never hidden.  Cross-process subscriber counts: `counting.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError

from ..events import Event
from ..wire import CONTROL_CHANNEL, EMPTY, Position, channel_of_live, live_channel, meta_key
from . import (
    BrokerUnavailable,
    History,
    Listener,
    OutcomeUnknown,
    Published,
    history_from_replies,
    new_epoch,
    queue_history_reads,
)
from .counting import SubscriberCounter
from .pubsub import UNAVAILABLE, PubSubLoop, route_message, text
from .scripts import (
    PUBLISH_LUA,
    Call,
    Idempotency,
    calls_for,
    copies,
    max_copies,
    read_replies,
)

log = logging.getLogger("pushsvc.redis")

_UNAVAILABLE = UNAVAILABLE

_Pending = tuple[list[Call], "asyncio.Future[list[Any]]"]  # one publish request and its answer


_text = text


class RedisBroker:
    name = "redis"

    def __init__(
        self,
        url: str,
        history_size: int = 1000,
        history_ttl_seconds: int = 3600,
        timeout_seconds: float = 2.0,
        max_connections: int = 64,
        ping_interval_seconds: float = 1.0,
        backoff_cap_seconds: float = 5.0,
    ) -> None:
        self.url = url
        self.history_size = history_size
        self.history_ttl_seconds = history_ttl_seconds
        self.timeout = timeout_seconds
        self.ping_interval = ping_interval_seconds
        self.backoff_cap = backoff_cap_seconds
        common: dict[str, Any] = dict(
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 1),
        )
        self._pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout_seconds, **common
        )
        self.client = aioredis.Redis(connection_pool=self._pool)
        self._script = self.client.register_script(PUBLISH_LUA)
        self._batch: list[_Pending] = []
        self._batch_copies = 0
        self.max_copies = max_copies(timeout_seconds)
        self._flushes: set[asyncio.Task[None]] = set()
        pubsub_pool = ConnectionPool.from_url(
            url, protocol=2, client_name="pushsvc-pubsub", **{**common, "retry": Retry(NoBackoff(), 0)}
        )
        self._listener: Listener | None = None
        self._loop = PubSubLoop(
            pubsub_pool, label="redis", timeout=timeout_seconds, ping_interval=ping_interval_seconds,
            backoff_cap=backoff_cap_seconds, on_message=self._on_message, on_confirmed=self._on_confirmed,
        )
        self._counter = SubscriberCounter(
            lambda query: self.client.publish(CONTROL_CHANNEL, query), lambda _key: self.client, timeout_seconds
        )

    @property
    def reconnects(self) -> int:
        return self._loop.reconnects

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, listener: Listener) -> None:
        self._listener = listener
        self._counter.listener = listener
        self._loop.want([CONTROL_CHANNEL])
        self._loop.start()

    async def stop(self) -> None:
        for flush in list(self._flushes):
            flush.cancel()
        await self._loop.stop()
        await self._counter.stop()
        await self.client.aclose()
        await self._pool.disconnect()

    def status(self) -> tuple[bool, str]:
        ok, why = self._loop.responsive()
        if ok:
            return True, "redis pub/sub connected"
        if not self._loop.connected:
            return False, f"redis {why}"
        return False, "redis does not answer (paused or overloaded)"

    # -- publishing and history ------------------------------------------------------

    async def publish(self, events: Sequence[Event], idempotency: Idempotency | None = None) -> Published:
        """Store and publish, in order.  Publishes that arrive in the same loop iteration
        (concurrent requests) share pipeline round trips; each gets its own replies."""
        # A fresh epoch per channel (used only if the channel has none yet): epochs must differ
        # between channels, or a resume id replayed against another channel set could pass.
        calls = calls_for(events, idempotency, self.history_size, self.history_ttl_seconds, new_epoch)
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        count = copies(events)
        if self._batch and self._batch_copies + count > self.max_copies:
            self._flush_batch()  # one pipeline holds at most what one request may
        self._batch.append((calls, done))
        self._batch_copies += count
        if len(self._batch) == 1:
            asyncio.get_running_loop().call_soon(self._flush_batch)
        ids, replayed = read_replies(await done)
        return Published(ids, replayed)

    def _flush_batch(self) -> None:
        if not self._batch:
            return
        batch, self._batch, self._batch_copies = self._batch, [], 0
        task = asyncio.get_running_loop().create_task(self._send_batch(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _send_batch(self, batch: list[_Pending]) -> None:
        calls = [call for request_calls, _ in batch for call in request_calls]
        sent = False
        try:
            async with asyncio.timeout(self.timeout):
                async with self.client.pipeline(transaction=False) as pipe:
                    # Take a connected connection first: failing here stores nothing.
                    pipe.connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
                    sent = True
                    replies = await self._evalsha_all(pipe, calls)
        except _UNAVAILABLE as exc:
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            failure: BrokerUnavailable
            if sent:
                failure = OutcomeUnknown(f"redis did not answer the publish in time ({what})")
            else:
                failure = BrokerUnavailable(f"redis publish failed: {what}")
            for _, done in batch:
                if not done.done():
                    done.set_exception(failure)
            return
        start = 0
        for request_calls, done in batch:
            end = start + len(request_calls)
            if not done.done():
                done.set_result(replies[start:end])
            start = end

    async def _evalsha_all(self, pipe: Any, calls: list[Call]) -> list[Any]:
        """One pipeline of EVALSHA; loads the script once if Redis lost it (restart).  A
        NOSCRIPT reply means the script did not run, so sending the calls again is safe (and
        any call that did run is answered from its idempotency record)."""
        for attempt in range(2):
            for keys, args in calls:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            try:
                return list(await pipe.execute())
            except NoScriptError:
                if attempt:
                    raise
                await self.client.script_load(PUBLISH_LUA)
                pipe.connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        raise AssertionError("unreachable")

    async def position(self, channel: str) -> Position:
        try:
            async with asyncio.timeout(self.timeout):
                epoch, seq = await self.client.hmget(meta_key(channel), ["epoch", "seq"])
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis read failed: {type(exc).__name__}") from exc
        if epoch is None:
            return EMPTY
        return Position(_text(epoch), int(seq or 0))

    async def history(self, channel: str, after_seq: int, limit: int | None = None) -> History:
        try:
            async with asyncio.timeout(self.timeout):
                async with self.client.pipeline(transaction=True) as pipe:
                    queue_history_reads(pipe, channel, after_seq, limit)
                    replies = await pipe.execute()
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis read failed: {type(exc).__name__}") from exc
        return history_from_replies(replies)

    async def barrier(self) -> None:
        """Return once every message Redis published before this call has been read.

        A PING on the pub/sub connection is answered after everything Redis wrote to it
        before, so after a position read plus a barrier the hub knows exactly which live
        messages came after that position.
        """
        try:
            ok = await self._loop.barrier()
        except TimeoutError:
            raise BrokerUnavailable("redis did not answer a pub/sub barrier") from None
        if not ok:
            raise BrokerUnavailable("the pub/sub connection was lost")

    # -- subscriptions -----------------------------------------------------------------

    # Each pushsvc channel is two Redis channel names (public name and internal live channel).

    @staticmethod
    def _redis_names(channel: str) -> tuple[str, ...]:
        return (channel,) if channel == CONTROL_CHANNEL else (channel, live_channel(channel))

    def _is_confirmed(self, channel: str) -> bool:
        return self._loop.confirmed(self._redis_names(channel))

    def subscribe(self, channel: str) -> None:
        self._loop.want(self._redis_names(channel))
        if self._is_confirmed(channel) and self._listener is not None:
            asyncio.get_running_loop().call_soon(self._reconfirm, channel)

    def _reconfirm(self, channel: str) -> None:
        if self._is_confirmed(channel) and self._listener is not None:
            self._listener.on_subscribed(channel)

    def unsubscribe(self, channel: str) -> None:
        if channel == CONTROL_CHANNEL:
            return
        self._loop.drop(self._redis_names(channel))

    def _on_message(self, name: str, payload: bytes) -> None:
        assert self._listener is not None
        route_message(self._listener, self._counter.on_query, name, payload)

    def _on_confirmed(self, name: str) -> None:
        public = channel_of_live(name) or name
        if public != CONTROL_CHANNEL and self._is_confirmed(public):
            assert self._listener is not None
            self._listener.on_subscribed(public)

    async def count_subscribers(self, channel: str, local: int) -> int:
        return await self._counter.count(channel, local)
