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
idempotency record, so any retry is harmless.  Concurrent requests share pipelines
(`batcher.py`), sent on the publish connection of their own (`ScriptPipelines`, one per
pipeline in flight: one).  A failure before the pipeline is sent (cannot connect) is
`BrokerUnavailable` (nothing stored); after it was sent, `OutcomeUnknown`.

The pub/sub connection is driven by hand (`pubsub.PubSubLoop`, not redis-py's `PubSub`,
which re-subscribes silently after a reconnect and so hides gaps); every confirmation is
reported to the hub, which resynchronises the channel's streams from history -- so a gap is
healed, never hidden.  Cross-process subscriber counts: `counting.py`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis._parsers.base import BaseParser
from redis.asyncio.connection import BlockingConnectionPool, Connection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError

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
from .batcher import Batcher
from .counting import SubscriberCounter
from .pubsub import UNAVAILABLE, PubSubLoop, connect, message_handler, text
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

_text = text

#: Publish pipelines waiting for Redis at once (`batcher.py`): with one, everything that
#: arrives during a round trip leaves in the next pipeline.
PUBLISH_PIPELINES = 1


def pack_evalsha(sha: str, calls: Sequence[Call]) -> bytes:
    """The RESP bytes of ``EVALSHA sha numkeys key... arg...`` for every call, as redis-py
    packs them (str as UTF-8, int as decimal, bytes as they are), by hiredis's C packer
    (half the cost of formatting them in Python)."""
    return b"".join([hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args)) for keys, args in calls])


class ScriptPipelines:
    """The publish pipelines' own connections, one per pipeline in flight, driven directly:
    the pipeline packed by `pack_evalsha`, sent in one write, its replies read one by one,
    under one time budget for the whole exchange.  (redis-py's ``Pipeline`` adds a timeout
    per read and a task per write: most of what a publish cost this process.)

    A failure before the pipeline is sent (cannot connect) is `BrokerUnavailable`: nothing
    was stored; after it, `OutcomeUnknown`.  A connection that breaks (Redis restarted, the
    connection killed) is reconnected and the pipeline sent again, once: every call carries
    an idempotency record, so a call that had run answers from it and stores nothing twice.
    A call answered ``NOSCRIPT`` (Redis lost its script cache) did not run: the script is
    loaded and that call sent again, once.  A connection whose exchange failed or was cut
    short is closed, never reused with replies still pending on it."""

    def __init__(self, url: str, timeout_seconds: float, script: str) -> None:
        # No socket timeout: the budget bounds every exchange (connect, send and reads).
        self._pool = ConnectionPool.from_url(
            url, socket_timeout=None, socket_connect_timeout=timeout_seconds, retry=Retry(NoBackoff(), 0)
        )
        self._idle: list[Connection] = []
        self._script = script
        self._sha = hashlib.sha1(script.encode("utf-8")).hexdigest()

    async def prepare(self, count: int, timeout: float) -> None:
        """Connect `count` connections ahead of the first publish (best effort: a Redis that
        is down now is met again by the first publish)."""
        for _ in range(count - len(self._idle)):
            conn: Connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                async with asyncio.timeout(timeout):
                    await connect(conn)
            except _UNAVAILABLE:
                await conn.disconnect(nowait=True)
            self._idle.append(conn)

    async def send(self, calls: list[Call], budget: float) -> list[Any]:
        """Each call's reply (a ResponseError instance for an error reply), in order."""
        conn = self._idle.pop() if self._idle else self._pool.make_connection()  # type: ignore[no-untyped-call]
        sent = False
        try:
            async with asyncio.timeout(budget):
                if not conn.is_connected:
                    await connect(conn)  # failing here stores nothing
                sent = True
                return await self._exchange(conn, calls)
        except _UNAVAILABLE as exc:
            await conn.disconnect(nowait=True)
            what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if sent:
                raise OutcomeUnknown(f"redis did not answer the publish in time ({what})") from None
            raise BrokerUnavailable(f"redis publish failed: {what}") from None
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            self._idle.append(conn)

    async def _exchange(self, conn: Connection, calls: list[Call]) -> list[Any]:
        replies: list[Any] = [None] * len(calls)
        pending = list(range(len(calls)))
        reconnects = reloads = 1
        while pending:
            try:
                if not conn.is_connected:
                    await connect(conn)
                got = await _round_trip(conn, pack_evalsha(self._sha, [calls[i] for i in pending]), len(pending))
            except RedisConnectionError:
                if not reconnects:
                    raise
                reconnects -= 1
                await conn.disconnect(nowait=True)
                continue  # sent again on a fresh connection
            missing = []
            for i, reply in zip(pending, got, strict=True):
                replies[i] = reply
                if isinstance(reply, NoScriptError) and reloads:
                    missing.append(i)
            if missing:
                reloads -= 1
                load = await _round_trip(conn, b"".join(conn.pack_command("SCRIPT", "LOAD", self._script)), 1)
                if isinstance(load[0], Exception):
                    raise load[0]
            pending = missing
        return replies

    async def close(self) -> None:
        for conn in self._idle:
            await conn.disconnect()
        self._idle.clear()
        await self._pool.disconnect()


async def _round_trip(conn: Connection, packed: bytes, count: int) -> list[Any]:
    """Write `packed` (`count` commands) on `conn`'s socket and read `count` replies, parsed
    by a hiredis reader of its own, as redis-py's parser gives them (an error reply as its
    ResponseError instance, in its place; one that means the connection is unusable is
    raised) -- without redis-py's per-reply machinery.  A connection closed or broken
    meanwhile is RedisConnectionError."""
    reader, writer = conn._reader, conn._writer
    if reader is None or writer is None:
        raise RedisConnectionError("not connected")
    parser = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
    replies: list[Any] = []
    try:
        writer.write(packed)
        while len(replies) < count:
            reply = parser.gets()
            if reply is False:
                data = await reader.read(65536)
                if not data:
                    raise RedisConnectionError("Connection closed by server.")
                parser.feed(data)
            elif isinstance(reply, RedisConnectionError):
                raise reply
            else:
                replies.append(reply)
    except OSError as exc:
        raise RedisConnectionError(f"{type(exc).__name__}: {exc}") from exc
    return replies


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
        self._pipelines = ScriptPipelines(url, timeout_seconds, PUBLISH_LUA)
        self._prepare: asyncio.Task[None] | None = None
        self.batcher = Batcher(
            self._pipelines.send, max_copies=max_copies(timeout_seconds), timeout=timeout_seconds,
            in_flight=PUBLISH_PIPELINES,
        )
        pubsub_pool = ConnectionPool.from_url(
            url, protocol=2, client_name="pushsvc-pubsub", **{**common, "retry": Retry(NoBackoff(), 0)}
        )
        self._listener: Listener | None = None
        self._loop = PubSubLoop(
            pubsub_pool, label="redis", timeout=timeout_seconds, ping_interval=ping_interval_seconds,
            backoff_cap=backoff_cap_seconds, handler_for=self._handler_for, on_confirmed=self._on_confirmed,
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
        self._prepare = asyncio.get_running_loop().create_task(
            self._pipelines.prepare(PUBLISH_PIPELINES, self.timeout)
        )

    async def stop(self) -> None:
        self.batcher.cancel()
        if self._prepare is not None:
            self._prepare.cancel()
        await self._loop.stop()
        await self._counter.stop()
        await self.client.aclose()
        await self._pool.disconnect()
        await self._pipelines.close()

    def status(self) -> tuple[bool, str]:
        ok, why = self._loop.responsive()
        if ok:
            return True, "redis pub/sub connected"
        if not self._loop.connected:
            return False, f"redis {why}"
        return False, "redis does not answer (paused or overloaded)"

    # -- publishing and history ------------------------------------------------------

    async def publish(self, events: Sequence[Event], idempotency: Idempotency | None = None) -> Published:
        """Store and publish, in order.  Concurrent publishes share pipelines (`batcher.py`);
        each gets its own replies."""
        # A fresh epoch per channel (used only if the channel has none yet): epochs must differ
        # between channels, or a resume id replayed against another channel set could pass.
        calls = calls_for(events, idempotency, self.history_size, self.history_ttl_seconds, new_epoch)
        ids, replayed = read_replies(await self.batcher.submit(calls, copies(events)))
        return Published(ids, replayed)

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

    def _handler_for(self, name: str) -> Callable[[bytes], None]:
        assert self._listener is not None
        return message_handler(self._listener, self._counter.on_query, name)

    def _on_confirmed(self, name: str) -> None:
        public = channel_of_live(name) or name
        if public != CONTROL_CHANNEL and self._is_confirmed(public):
            assert self._listener is not None
            self._listener.on_subscribed(public)

    async def count_subscribers(self, channel: str, local: int) -> int:
        return await self._counter.count(channel, local)
