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

The pub/sub connection is driven here, not by redis-py's `PubSub` (which re-subscribes
silently after a reconnect and so hides gaps): one supervisor task connects, then runs a
writer (SUBSCRIBE/UNSUBSCRIBE to match the wanted set, PING for liveness) and a reader.
When the connection is lost it reconnects with capped, jittered exponential backoff and
re-subscribes; every confirmation is reported to the hub, which resynchronises the
channel's streams from history -- so a gap is healed, never hidden.

Cross-process subscriber counts (`count_subscribers`, for ``GET /channels/<name>``): every
process also subscribes to ``pushsvc:control``.  The asking process PUBLISHes a query there
with a fresh reply key; PUBLISH's answer is how many processes received it; each of them
(the asker included) RPUSHes ``{"from": <process>, "count": <local streams>}`` to the reply
key (which expires after 10 s), and the asker BLPOPs that many replies within the timeout,
adding its own live count instead of its own reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, Connection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from ..events import Event
from ..wire import CONTROL_CHANNEL, EMPTY, Position, channel_of_live, history_key, live_channel, meta_key
from . import BrokerUnavailable, History, Listener, OutcomeUnknown, Published, new_epoch
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

_UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)

REPLY_TTL_SECONDS = 10

_Pending = tuple[list[Call], "asyncio.Future[list[Any]]"]  # one publish request and its answer


class _PubSubDead(Exception):
    pass


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


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
        self._pubsub_factory = ConnectionPool.from_url(
            url, protocol=2, client_name="pushsvc-pubsub", **{**common, "retry": Retry(NoBackoff(), 0)}
        )
        self._listener: Listener | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._desired: set[str] = set()
        self._sent: set[str] = set()
        self._pending: dict[str, int] = {}
        self._confirmed: set[str] = set()
        self._connected = False
        self._last_error = "not connected yet"
        self._ping_sent_at: float | None = None
        self._barriers_waiting: list[asyncio.Future[bool]] = []
        self._barriers_sent: deque[list[asyncio.Future[bool]]] = deque()
        self.reconnects = 0
        self.instance = uuid.uuid4().hex
        self._control_tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self, listener: Listener) -> None:
        self._listener = listener
        self._desired.add(CONTROL_CHANNEL)
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="pushsvc-pubsub")

    async def stop(self) -> None:
        for flush in list(self._flushes):
            flush.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for task in list(self._control_tasks):
            task.cancel()
        await asyncio.gather(*self._control_tasks, return_exceptions=True)
        await self.client.aclose()
        await self._pool.disconnect()
        await self._pubsub_factory.disconnect()

    def status(self) -> tuple[bool, str]:
        if not self._connected:
            return False, f"redis unavailable: {self._last_error}"
        pinged = self._ping_sent_at
        if pinged is not None and asyncio.get_running_loop().time() - pinged > self.timeout:
            return False, "redis does not answer (paused or overloaded)"
        return True, "redis pub/sub connected"

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
                    pipe.hmget(meta_key(channel), ["epoch", "seq"])
                    pipe.xrange(history_key(channel), "-", "+", count=1)
                    pipe.xrange(history_key(channel), f"0-{after_seq + 1}", "+", count=limit)
                    (epoch, seq), first, entries = await pipe.execute()
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis read failed: {type(exc).__name__}") from exc
        if epoch is None:
            return History(None, 0, None, [])
        first_seq = int(_text(first[0][0]).split("-")[1]) if first else None
        retained = [(int(_text(entry_id).split("-")[1]), fields[b"m"]) for entry_id, fields in entries]
        return History(_text(epoch), int(seq or 0), first_seq, retained)

    async def barrier(self) -> None:
        """Return once every message Redis published before this call has been read.

        A PING on the pub/sub connection is answered after everything Redis wrote to it
        before, so after a position read plus a barrier the hub knows exactly which live
        messages came after that position.
        """
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._barriers_waiting.append(done)
        self._wake.set()
        try:
            async with asyncio.timeout(self.timeout * 2):
                ok = await done
        except TimeoutError:
            raise BrokerUnavailable("redis did not answer a pub/sub barrier") from None
        if not ok:
            raise BrokerUnavailable("the pub/sub connection was lost")

    # -- subscriptions -----------------------------------------------------------------

    # `_desired`, `_sent`, `_pending` and `_confirmed` hold Redis channel names: each
    # pushsvc channel is two of them (public name and internal live channel).

    @staticmethod
    def _redis_names(channel: str) -> tuple[str, ...]:
        return (channel,) if channel == CONTROL_CHANNEL else (channel, live_channel(channel))

    def _is_confirmed(self, channel: str) -> bool:
        return all(name in self._confirmed for name in self._redis_names(channel))

    def subscribe(self, channel: str) -> None:
        self._desired.update(self._redis_names(channel))
        if self._is_confirmed(channel) and self._listener is not None:
            asyncio.get_running_loop().call_soon(self._reconfirm, channel)
        self._wake.set()

    def _reconfirm(self, channel: str) -> None:
        if self._is_confirmed(channel) and self._listener is not None:
            self._listener.on_subscribed(channel)

    def unsubscribe(self, channel: str) -> None:
        if channel == CONTROL_CHANNEL:
            return
        self._desired.difference_update(self._redis_names(channel))
        self._wake.set()

    async def _supervise(self) -> None:
        failures = 0
        while True:
            conn: Connection = self._pubsub_factory.make_connection()  # type: ignore[no-untyped-call]
            try:
                async with asyncio.timeout(self.timeout * 2):
                    await conn.connect()  # type: ignore[no-untyped-call]
                if failures or self.reconnects:
                    log.info("redis pub/sub connected again", extra={"after_failures": failures})
                self._reset_subscription_state()
                self._connected = True
                failures = 0
                await self._run_connection(conn)
            except asyncio.CancelledError:
                raise
            except (_PubSubDead, *_UNAVAILABLE) as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                if self._connected:
                    self.reconnects += 1
                    log.warning("redis pub/sub connection lost", extra={"error": self._last_error})
                elif failures == 0:
                    log.warning("redis unreachable", extra={"error": self._last_error})
            finally:
                self._connected = False
                await conn.disconnect(nowait=True)
            failures += 1
            delay = min(self.backoff_cap, 0.05 * (2 ** min(failures, 16)))
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    def _reset_subscription_state(self) -> None:
        self._sent.clear()
        self._pending.clear()
        self._confirmed.clear()
        self._ping_sent_at = None
        for batch in [self._barriers_waiting, *self._barriers_sent]:
            for done in batch:
                if not done.done():
                    done.set_result(False)
        self._barriers_waiting = []
        self._barriers_sent.clear()
        self._wake.set()

    async def _run_connection(self, conn: Connection) -> None:
        reader = asyncio.ensure_future(self._read(conn))
        writer = asyncio.ensure_future(self._write(conn))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise _PubSubDead("pub/sub task ended")
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)

    async def _write(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time()
        while True:
            now = loop.time()
            if self._ping_sent_at is not None and now - self._ping_sent_at > self.timeout + self.ping_interval:
                raise _PubSubDead("no PING reply from redis")
            # Clear the wake-up before reading the wanted set, and record what is sent before
            # awaiting the send: the reply may be read while the send is still draining.
            self._wake.clear()
            to_subscribe = [ch for ch in self._desired if ch not in self._sent]
            to_unsubscribe = [ch for ch in self._sent if ch not in self._desired]
            for channel in to_subscribe:
                self._sent.add(channel)
                self._pending[channel] = self._pending.get(channel, 0) + 1
            for channel in to_unsubscribe:
                self._sent.discard(channel)
                self._confirmed.discard(channel)
            if to_subscribe:
                await conn.send_command("SUBSCRIBE", *to_subscribe)
            if to_unsubscribe:
                await conn.send_command("UNSUBSCRIBE", *to_unsubscribe)
            if self._barriers_waiting:
                self._barriers_sent.append(self._barriers_waiting)
                self._barriers_waiting = []
                await conn.send_command("PING", "barrier")
            if now >= next_ping and self._ping_sent_at is None:
                self._ping_sent_at = now
                next_ping = now + self.ping_interval
                await conn.send_command("PING")
            if self._ping_sent_at is None:
                deadline = next_ping
            else:
                deadline = self._ping_sent_at + self.timeout + self.ping_interval
            try:
                async with asyncio.timeout(max(0.01, deadline - loop.time())):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _read(self, conn: Connection) -> None:
        listener = self._listener
        assert listener is not None
        while True:
            reply = await conn.read_response(timeout=math.inf, disconnect_on_error=False)
            if isinstance(reply, list) and reply:
                kind = reply[0]
                if kind == b"message":
                    name = _text(reply[1])
                    if name == CONTROL_CHANNEL:
                        self._on_control(reply[2])
                        continue
                    internal = channel_of_live(name)
                    if internal is not None:
                        listener.on_message(internal, reply[2], True)
                    else:
                        listener.on_message(name, reply[2], False)
                elif kind == b"subscribe":
                    self._on_subscribe_reply(_text(reply[1]))
                elif kind == b"pong":
                    self._on_pong(reply[1] if len(reply) > 1 else b"")
            elif isinstance(reply, bytes):  # PING answered outside subscribed mode
                self._on_pong(b"" if reply == b"PONG" else reply)

    def _on_pong(self, token: bytes) -> None:
        if token == b"barrier":
            if self._barriers_sent:
                for done in self._barriers_sent.popleft():
                    if not done.done():
                        done.set_result(True)
            return
        self._ping_sent_at = None
        self._wake.set()

    def _on_subscribe_reply(self, channel: str) -> None:
        left = self._pending.get(channel, 0) - 1
        if left > 0:
            self._pending[channel] = left
            return
        self._pending.pop(channel, None)
        if channel in self._desired and channel in self._sent:
            self._confirmed.add(channel)
            public = channel_of_live(channel) or channel
            if self._is_confirmed(public):
                assert self._listener is not None
                self._listener.on_subscribed(public)

    # -- cross-process subscriber counts -------------------------------------------------

    async def count_subscribers(self, channel: str, local: int) -> int:
        reply_key = f"pushsvc:control:reply:{uuid.uuid4().hex}"
        query = json.dumps({"op": "count", "channel": channel, "reply": reply_key, "from": self.instance})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout * 0.75  # below the socket timeout
        total = local
        try:
            async with asyncio.timeout(self.timeout):
                receivers = int(await self.client.publish(CONTROL_CHANNEL, query))
                for _ in range(receivers):
                    wait = deadline - loop.time()
                    if wait <= 0.01:
                        break
                    popped = await self.client.blpop([reply_key], timeout=wait)
                    if popped is None:
                        break
                    answer = json.loads(popped[1])
                    if answer.get("from") != self.instance:
                        total += int(answer.get("count", 0))
                else:
                    return total
        except _UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis count failed: {type(exc).__name__}") from exc
        log.warning("not every process answered a subscriber count in time", extra={"channel": channel})
        return total

    def _on_control(self, payload: bytes) -> None:
        try:
            query = json.loads(payload)
            channel, reply_key = str(query["channel"]), str(query["reply"])
        except (ValueError, KeyError, TypeError):
            return
        if query.get("op") != "count" or not reply_key.startswith("pushsvc:control:reply:"):
            return
        assert self._listener is not None
        count = self._listener.local_subscribers(channel)
        task = asyncio.get_running_loop().create_task(self._answer(reply_key, count))
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)

    async def _answer(self, reply_key: str, count: int) -> None:
        answer = json.dumps({"from": self.instance, "count": count})
        try:
            async with asyncio.timeout(self.timeout):
                async with self.client.pipeline(transaction=True) as pipe:
                    pipe.rpush(reply_key, answer)
                    pipe.expire(reply_key, REPLY_TTL_SECONDS)
                    await pipe.execute()
        except _UNAVAILABLE as exc:
            log.warning("could not answer a subscriber count", extra={"error": type(exc).__name__})
