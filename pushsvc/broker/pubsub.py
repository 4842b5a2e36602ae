"""One pub/sub connection driven by hand: its subscription bookkeeping, its socket loop,
and the one adapter over the redis-py internals it needs.

* `RawConnection` is the only place that touches redis-py's `Connection` for pub/sub
  (`connect`, `send_command`, `read_response`, `disconnect`); `check_redis_py()` verifies
  those still take what is passed here (tests/unit/test_pubsub_adapter.py runs it, so a new
  redis-py that changes them fails loudly instead of hanging a reader).
* `Subscriptions` is pure bookkeeping of Redis channel names: wanted, sent, confirmations
  still owed (counted, so a name dropped and re-added quickly is confirmed by the *second*
  reply), confirmed, and unsubscribes still owed an answer (so an unprompted
  ``sunsubscribe`` -- a cluster slot that left the node -- is told apart from our own).
* `PubSubLoop` runs one connection: a supervisor connects (reconnecting with capped,
  jittered exponential backoff), then a writer sends (S)SUBSCRIBE/(S)UNSUBSCRIBE to match
  the wanted set and PINGs for liveness and barriers, and a reader hands every message and
  confirmation to its owner's callbacks.  Classic (``SUBSCRIBE``/``message``) or sharded
  (``SSUBSCRIBE``/``smessage``, one command per slot group) -- the same loop.

redis-py's own `PubSub` is not used: it re-subscribes silently after a reconnect, hiding
gaps, and its cluster variant polls nodes one after another (see `cluster.py`).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import RedisError, ResponseError

from ..wire import CONTROL_CHANNEL, channel_of_live

log = logging.getLogger("pushsvc.redis")

UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)


class PubSubDead(Exception):
    pass


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def route_message(listener: Any, on_control: Callable[[bytes], None], name: str, payload: bytes) -> None:
    """A pub/sub message to where it belongs: the control channel's queries to `on_control`;
    the internal ``pushsvc:{<ch>}:live`` channel's to the listener as trusted messages of
    ``<ch>``; a raw message on a public name as untrusted (it can never carry a position)."""
    if name == CONTROL_CHANNEL:
        on_control(payload)
        return
    internal = channel_of_live(name)
    if internal is not None:
        listener.on_message(internal, payload, True)
    else:
        listener.on_message(name, payload, False)


# -- the adapter over redis-py ---------------------------------------------------------------


def check_redis_py() -> None:
    """Raise RuntimeError when redis-py's `Connection` no longer offers what `RawConnection`
    calls (names, and the keyword arguments passed)."""
    wanted = {
        "connect": set(),
        "send_command": set(),
        "read_response": {"timeout", "disconnect_on_error"},
        "disconnect": {"nowait"},
    }
    for name, keywords in wanted.items():
        method = getattr(Connection, name, None)
        if method is None or not callable(method):
            raise RuntimeError(f"redis-py Connection.{name} is gone: pushsvc's pub/sub reader needs it")
        params = inspect.signature(method).parameters
        missing = keywords - set(params)
        if missing:
            raise RuntimeError(f"redis-py Connection.{name} no longer takes {sorted(missing)}")


class RawConnection:
    """One RESP2 connection used in subscribed mode."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._conn: Connection = pool.make_connection()  # type: ignore[no-untyped-call]

    async def connect(self) -> None:
        await self._conn.connect()  # type: ignore[no-untyped-call]

    async def send(self, *args: str) -> None:
        await self._conn.send_command(*args)

    async def read(self) -> Any:
        """The next reply or push; a server error reply is returned (not raised)."""
        try:
            return await self._conn.read_response(timeout=math.inf, disconnect_on_error=False)
        except ResponseError as exc:
            return exc

    async def close(self) -> None:
        await self._conn.disconnect(nowait=True)


# -- bookkeeping -----------------------------------------------------------------------------


@dataclass
class Subscriptions:
    """Redis channel names of one pub/sub connection (no I/O)."""

    desired: set[str] = field(default_factory=set)
    sent: set[str] = field(default_factory=set)
    pending: dict[str, int] = field(default_factory=dict)
    confirmed: set[str] = field(default_factory=set)
    unsub_pending: dict[str, int] = field(default_factory=dict)

    def changes(self) -> tuple[list[str], list[str]]:
        """(to subscribe, to unsubscribe), recorded as sent before they are sent: the reply
        may be read while the send is still draining."""
        to_subscribe = [ch for ch in self.desired if ch not in self.sent]
        to_unsubscribe = [ch for ch in self.sent if ch not in self.desired]
        for name in to_subscribe:
            self.sent.add(name)
            self.pending[name] = self.pending.get(name, 0) + 1
        for name in to_unsubscribe:
            self.sent.discard(name)
            self.confirmed.discard(name)
            self.unsub_pending[name] = self.unsub_pending.get(name, 0) + 1
        return to_subscribe, to_unsubscribe

    def on_subscribe_reply(self, name: str) -> bool:
        """Count a confirmation; True when `name` is now confirmed."""
        left = self.pending.get(name, 0) - 1
        if left > 0:
            self.pending[name] = left
            return False
        self.pending.pop(name, None)
        if name in self.desired and name in self.sent:
            self.confirmed.add(name)
            return True
        return False

    def on_unsubscribe_reply(self, name: str) -> bool:
        """True when the server dropped `name` without being asked (slot moved)."""
        left = self.unsub_pending.get(name, 0)
        if left > 1:
            self.unsub_pending[name] = left - 1
            return False
        if left == 1:
            del self.unsub_pending[name]
            return False
        evicted = name in self.sent
        self.desired.discard(name)
        self.sent.discard(name)
        self.confirmed.discard(name)
        return evicted

    def reset(self) -> None:
        """A new connection: nothing is sent or confirmed."""
        self.sent.clear()
        self.pending.clear()
        self.confirmed.clear()
        self.unsub_pending.clear()


# -- the socket loop -------------------------------------------------------------------------


@dataclass(frozen=True)
class Dialect:
    subscribe: str
    unsubscribe: str
    message: bytes
    subscribed: bytes
    unsubscribed: bytes


CLASSIC = Dialect("SUBSCRIBE", "UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe")
SHARDED = Dialect("SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe")


def _one_group(names: list[str]) -> list[list[str]]:
    return [names] if names else []


class PubSubLoop:
    """Keeps one pub/sub connection subscribed to `subs.desired` and reports what it reads.

    `on_message(name, payload)` and `on_confirmed(name)` run on the reader; `on_evicted(name)`
    when the server unsubscribed a name by itself; `on_lost()` after the connection was lost
    (before reconnecting).  `group` splits names into commands (sharded: one per slot).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        label: str,
        timeout: float,
        ping_interval: float,
        backoff_cap: float,
        on_message: Callable[[str, bytes], None],
        on_confirmed: Callable[[str], None],
        dialect: Dialect = CLASSIC,
        group: Callable[[list[str]], list[list[str]]] = _one_group,
        on_evicted: Callable[[str], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        on_error_reply: Callable[[ResponseError], None] | None = None,
    ) -> None:
        self.pool = pool
        self.label = label
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.backoff_cap = backoff_cap
        self.dialect = dialect
        self._group = group
        self._on_message = on_message
        self._on_confirmed = on_confirmed
        self._on_evicted = on_evicted
        self._on_lost = on_lost
        self._on_error_reply = on_error_reply
        self.subs = Subscriptions()
        self.connected = False
        self.last_error = "not connected yet"
        self.reconnects = 0
        self.messages = 0
        self._wake = asyncio.Event()
        self._ping_sent_at: float | None = None
        self._barriers_waiting: list[asyncio.Future[bool]] = []
        self._barriers_sent: deque[list[asyncio.Future[bool]]] = deque()
        self._task: asyncio.Task[None] | None = None

    # -- owner's interface -------------------------------------------------------------

    def start(self) -> None:
        check_redis_py()
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"pushsvc-pubsub-{self.label}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._fail_barriers()
        await self.pool.disconnect()

    def want(self, names: Iterable[str]) -> None:
        self.subs.desired.update(names)
        self._wake.set()

    def drop(self, names: Iterable[str]) -> None:
        self.subs.desired.difference_update(names)
        self._wake.set()

    def confirmed(self, names: Iterable[str]) -> bool:
        return all(name in self.subs.confirmed for name in names)

    def responsive(self) -> tuple[bool, str]:
        if not self.connected:
            return False, f"unavailable: {self.last_error}"
        pinged = self._ping_sent_at
        if pinged is not None and asyncio.get_running_loop().time() - pinged > self.timeout:
            return False, "does not answer (paused or overloaded)"
        return True, "connected"

    async def barrier(self) -> bool:
        """True once everything the server wrote to this connection before the call has been
        read (a PING is answered in order); False when the connection was lost meanwhile;
        TimeoutError when it does not answer."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._barriers_waiting.append(done)
        self._wake.set()
        async with asyncio.timeout(self.timeout * 2):
            return await done

    # -- the connection ------------------------------------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        while True:
            conn = RawConnection(self.pool)
            try:
                async with asyncio.timeout(self.timeout * 2):
                    await conn.connect()
                if failures or self.reconnects:
                    log.info("redis pub/sub connected again", extra={"node": self.label, "after_failures": failures})
                self._reset()
                self.connected = True
                failures = 0
                await self._run_connection(conn)
            except asyncio.CancelledError:
                raise
            except (PubSubDead, *UNAVAILABLE) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if self.connected:
                    self.reconnects += 1
                    log.warning("redis pub/sub connection lost", extra={"node": self.label, "error": self.last_error})
                elif failures == 0:
                    log.warning("redis unreachable", extra={"node": self.label, "error": self.last_error})
            finally:
                was_connected, self.connected = self.connected, False
                await conn.close()
            if self._on_lost is not None and (was_connected or failures == 0):
                self._on_lost()
            failures += 1
            delay = min(self.backoff_cap, 0.05 * (2 ** min(failures, 16)))
            await asyncio.sleep(delay * (0.5 + random.random() / 2))

    def _fail_barriers(self) -> None:
        for batch in [self._barriers_waiting, *self._barriers_sent]:
            for done in batch:
                if not done.done():
                    done.set_result(False)
        self._barriers_waiting = []
        self._barriers_sent.clear()

    def _reset(self) -> None:
        self.subs.reset()
        self._ping_sent_at = None
        self._fail_barriers()
        self._wake.set()

    async def _run_connection(self, conn: RawConnection) -> None:
        reader = asyncio.ensure_future(self._read(conn))
        writer = asyncio.ensure_future(self._write(conn))
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise PubSubDead("pub/sub task ended")
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)

    async def _write(self, conn: RawConnection) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time()
        while True:
            now = loop.time()
            if self._ping_sent_at is not None and now - self._ping_sent_at > self.timeout + self.ping_interval:
                raise PubSubDead("no PING reply from redis")
            self._wake.clear()  # before reading the wanted set
            to_subscribe, to_unsubscribe = self.subs.changes()
            for names in self._group(to_subscribe):
                await conn.send(self.dialect.subscribe, *names)
            for names in self._group(to_unsubscribe):
                await conn.send(self.dialect.unsubscribe, *names)
            if self._barriers_waiting:
                self._barriers_sent.append(self._barriers_waiting)
                self._barriers_waiting = []
                await conn.send("PING", "barrier")
            if now >= next_ping and self._ping_sent_at is None:
                self._ping_sent_at = now
                next_ping = now + self.ping_interval
                await conn.send("PING")
            if self._ping_sent_at is None:
                deadline = next_ping
            else:
                deadline = self._ping_sent_at + self.timeout + self.ping_interval
            try:
                async with asyncio.timeout(max(0.01, deadline - loop.time())):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _read(self, conn: RawConnection) -> None:
        dialect = self.dialect
        while True:
            reply = await conn.read()
            if isinstance(reply, list) and reply:
                kind = reply[0]
                if kind == dialect.message:
                    self.messages += 1
                    self._on_message(text(reply[1]), reply[2])
                elif kind == dialect.subscribed:
                    name = text(reply[1])
                    if self.subs.on_subscribe_reply(name):
                        self._on_confirmed(name)
                elif kind == dialect.unsubscribed:
                    name = text(reply[1])
                    if self.subs.on_unsubscribe_reply(name) and self._on_evicted is not None:
                        self._on_evicted(name)
                elif kind == b"pong":
                    self._on_pong(reply[1] if len(reply) > 1 else b"")
            elif isinstance(reply, bytes):  # PING answered outside subscribed mode
                self._on_pong(b"" if reply == b"PONG" else reply)
            elif isinstance(reply, ResponseError):
                # A refused (S)SUBSCRIBE (MOVED: the slot is elsewhere): the owner re-routes,
                # and this connection starts afresh so no confirmation count is left owed.
                if self._on_error_reply is not None:
                    self._on_error_reply(reply)
                raise PubSubDead(f"redis refused a subscription: {reply}")

    def _on_pong(self, token: bytes) -> None:
        if token == b"barrier":
            if self._barriers_sent:
                for done in self._barriers_sent.popleft():
                    if not done.done():
                        done.set_result(True)
            return
        self._ping_sent_at = None
        self._wake.set()
