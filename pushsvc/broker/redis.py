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
from .batcher import Batcher, Landed
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


class _Replies(asyncio.Protocol):
    """A publish connection's protocol once redis-py has connected it: the replies are parsed
    (hiredis) as their bytes arrive and handed, when all that were asked for are in, to the
    callback of the exchange that asked -- straight from the event loop's read, without a
    reader task, a ``StreamReader`` or a future in between.  redis-py's own protocol stays
    underneath for the connection's end (``connection_lost``, EOF: its ``disconnect`` waits
    on them) and flow control."""

    def __init__(self, transport: asyncio.Transport, inner: asyncio.Protocol) -> None:
        self.transport = transport
        self.inner: Any = inner
        self.parser = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        self.lost = False
        self._count = 0
        self._replies: list[Any] = []
        self._on_done: Callable[[list[Any] | BaseException], None] | None = None

    def expect(self, packed: bytes, count: int, on_done: Callable[[list[Any] | BaseException], None]) -> None:
        """Write `packed` (`count` commands); `on_done` gets their replies, in order (an error
        reply as its ResponseError instance), or a RedisConnectionError if the connection
        fails first.  RedisConnectionError here if it cannot be written (nothing was sent)."""
        if self.lost or self._on_done is not None:
            raise RedisConnectionError("Connection closed by server." if self.lost else "connection busy")
        try:
            self.transport.write(packed)
        except Exception as exc:  # a transport closed under us (uvloop raises, asyncio logs)
            raise RedisConnectionError(f"{type(exc).__name__}: {exc}") from exc
        self._count, self._replies, self._on_done = count, [], on_done

    def abandon(self) -> None:
        """Drop the exchange in progress and close the connection: it is never used again
        with replies still pending on it."""
        self._on_done = None
        self.lost = True
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.parser.feed(data)
        if self._on_done is None:  # a reply nobody asked for: this connection cannot be trusted
            self.abandon()
            return
        replies = self._replies
        while len(replies) < self._count:
            try:
                reply = self.parser.gets()
            except Exception as exc:  # not RESP: nothing more on this connection can be trusted
                self._fail(RedisConnectionError(f"{type(exc).__name__}: {exc}"))
                self.abandon()
                return
            if reply is False:
                return
            if isinstance(reply, RedisConnectionError):  # (e.g. LOADING): the connection is unusable
                self._fail(reply)
                return
            replies.append(reply)
        on_done, self._on_done = self._on_done, None
        on_done(replies)

    def _fail(self, error: BaseException) -> None:
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done(error)

    def eof_received(self) -> bool | None:
        self.lost = True
        self._fail(RedisConnectionError("Connection closed by server."))
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(RedisConnectionError(f"connection lost: {exc}" if exc else "Connection closed by server."))
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def _replies_of(conn: Connection) -> _Replies | None:
    """`conn`'s `_Replies`, installed on its transport the first time; None when it is not
    connected or its connection was lost (then it must be disconnected before reuse)."""
    writer = conn._writer
    if writer is None:
        return None
    transport: Any = writer.transport
    protocol = transport.get_protocol()
    if type(protocol) is not _Replies:
        protocol = _Replies(transport, protocol)
        transport.set_protocol(protocol)
    return None if protocol.lost or transport.is_closing() else protocol


async def _round_trip(replies: _Replies | None, packed: bytes, count: int) -> list[Any]:
    """Write `packed` (`count` commands) and await their replies (`_Replies.expect`); an
    error reply that means the connection is unusable, or a lost connection, raises
    RedisConnectionError."""
    if replies is None:
        raise RedisConnectionError("not connected")
    future: asyncio.Future[list[Any] | BaseException] = asyncio.get_running_loop().create_future()

    def done(got: list[Any] | BaseException) -> None:
        if not future.done():
            future.set_result(got)

    replies.expect(packed, count, done)
    got = await future
    if isinstance(got, BaseException):
        raise got
    return got


def _settle(pending: Sequence[int], got: Sequence[Any], replies: list[Any], reloads: int) -> list[int]:
    """Place `got` (the replies to the calls `pending`) in `replies`; the calls answered
    ``NOSCRIPT`` (to be sent again once the script is loaded), while `reloads` is left."""
    missing = []
    for i, reply in zip(pending, got, strict=True):
        replies[i] = reply
        if isinstance(reply, NoScriptError) and reloads:
            missing.append(i)
    return missing


class ScriptPipelines:
    """The publish pipelines' own connections, one per pipeline in flight, driven directly:
    the pipeline packed by `pack_evalsha`, sent in one write, its replies parsed as they
    arrive (`_Replies`), under one time budget for the whole exchange.  (redis-py's
    ``Pipeline`` adds a timeout per read and a task per write: most of what a publish cost
    this process.)

    The usual exchange, on a connection that is up and idle, runs without a task or a
    coroutine (`start`): written from the batcher's flush, answered from the connection's
    read, bounded by one timer.  Everything else -- connecting, reconnecting, reloading the
    script -- runs in a task (`send`, or the rest of a `start` that met one of them).

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
        self._busy: dict[Connection, asyncio.TimerHandle] = {}  # in a `start` exchange: its deadline
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        #: Pipelines `start` sent (without a task), and those `send` took (for tests).
        self.started = self.sent = 0
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

    def start(self, calls: list[Call], budget: float, landed: Landed) -> bool:
        """Send `calls` now, on an idle connection that is up, and hand their replies (or the
        verdict) to `landed` when they come, within `budget` seconds; False, having done
        nothing, when no such connection is idle (then `send` it)."""
        if self._closed or not self._idle:
            return False
        conn = self._idle[-1]
        replies = _replies_of(conn)
        if replies is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget

        def answered(got: list[Any] | BaseException) -> None:
            timer = self._busy.pop(conn, None)
            if timer is not None:
                timer.cancel()
            if self._closed:
                landed(asyncio.CancelledError())
                return
            if not isinstance(got, BaseException):
                for reply in got:
                    if isinstance(reply, NoScriptError):
                        break
                else:
                    self._idle.append(conn)
                    landed(got)
                    return
            # A lost connection, or a lost script cache: the rest in a task, as `send` would.
            task = loop.create_task(self._run(conn, deadline, calls, got))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda done: landed(_outcome(done)))

        try:
            replies.expect(pack_evalsha(self._sha, calls), len(calls), answered)
        except RedisConnectionError:
            return False  # not sent: `send` reconnects
        self._idle.pop()
        self.started += 1
        self._busy[conn] = loop.call_at(deadline, self._expired, conn, replies, landed)
        return True

    def _expired(self, conn: Connection, replies: _Replies, landed: Landed) -> None:
        self._busy.pop(conn, None)
        replies.abandon()  # `answered` is not called
        self._idle.append(conn)  # (disconnected before its next use: `_replies_of` is None)
        landed(OutcomeUnknown("redis did not answer the publish in time (TimeoutError)"))

    async def send(self, calls: list[Call], budget: float) -> list[Any]:
        """Each call's reply (a ResponseError instance for an error reply), in order."""
        conn = self._idle.pop() if self._idle else self._pool.make_connection()  # type: ignore[no-untyped-call]
        self.sent += 1
        return await self._run(conn, asyncio.get_running_loop().time() + budget, calls, None)

    async def _run(
        self, conn: Connection, deadline: float, calls: list[Call], got: list[Any] | BaseException | None
    ) -> list[Any]:
        """The exchange of `calls` on `conn` until `deadline`; `got`: what a `start` exchange
        already got (its replies with ``NOSCRIPT`` among them, or its connection's failure:
        the pipeline was sent), None for a fresh one.  Gives `conn` back, whatever happens."""
        sent = got is not None
        try:
            async with asyncio.timeout_at(deadline):
                if got is None:
                    if conn.is_connected and _replies_of(conn) is None:
                        await conn.disconnect(nowait=True)  # lost while idle
                    if not conn.is_connected:
                        await connect(conn)  # failing here stores nothing
                    sent = True
                    return await self._exchange(conn, calls)
                if isinstance(got, BaseException):  # the connection failed after the pipeline left
                    await conn.disconnect(nowait=True)
                    return await self._exchange(conn, calls, reconnects=0)
                replies = [None] * len(calls)
                missing = _settle(range(len(calls)), got, replies, 1)
                await self._load(conn)
                return await self._exchange(conn, calls, replies, missing, reloads=0)
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

    async def _exchange(
        self, conn: Connection, calls: list[Call], replies: list[Any] | None = None,
        pending: list[int] | None = None, reconnects: int = 1, reloads: int = 1,
    ) -> list[Any]:
        replies = [None] * len(calls) if replies is None else replies
        pending = list(range(len(calls))) if pending is None else pending
        while pending:
            try:
                if not conn.is_connected:
                    await connect(conn)
                packed = pack_evalsha(self._sha, [calls[i] for i in pending])
                got = await _round_trip(_replies_of(conn), packed, len(pending))
            except RedisConnectionError:
                if not reconnects:
                    raise
                reconnects -= 1
                await conn.disconnect(nowait=True)
                continue  # sent again on a fresh connection
            pending = _settle(pending, got, replies, reloads)
            if pending:
                reloads -= 1
                await self._load(conn)
        return replies

    async def _load(self, conn: Connection) -> None:
        load = await _round_trip(_replies_of(conn), b"".join(conn.pack_command("SCRIPT", "LOAD", self._script)), 1)
        if isinstance(load[0], Exception):
            raise load[0]

    async def close(self) -> None:
        self._closed = True
        for timer in self._busy.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for conn in [*self._idle, *self._busy]:
            await conn.disconnect()
        self._idle.clear()
        self._busy.clear()
        await self._pool.disconnect()


def _outcome(task: asyncio.Task[list[Any]]) -> list[Any] | BaseException:
    """A finished task's replies, or what it raised (CancelledError if it was cancelled)."""
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception() or task.result()


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
            in_flight=PUBLISH_PIPELINES, start=self._pipelines.start,
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
        self.batcher.bind(asyncio.get_running_loop())
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
