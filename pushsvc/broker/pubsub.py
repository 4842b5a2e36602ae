"""One pub/sub connection driven by hand: its subscription bookkeeping, its socket loop,
and the one adapter over the redis-py internals it needs.

* `RawConnection` is the only place that touches redis-py's `Connection` for pub/sub
  (`connect`, `send_command`, `read_response`, `disconnect`) and its hiredis parser (after
  each awaited read, every reply already buffered is taken at once: one await per socket
  read, not per message); `check_redis_py()` verifies those still take what is passed here
  and drains a real parser fed known bytes (tests/unit/test_pubsub_adapter.py runs it, so a
  new redis-py that changes them fails loudly instead of hanging a reader).
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
from functools import partial
from typing import Any

from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.utils import HIREDIS_AVAILABLE

from ..wire import CONTROL_CHANNEL, channel_of_live

log = logging.getLogger("pushsvc.redis")

UNAVAILABLE = (RedisError, OSError, asyncio.TimeoutError)


class PubSubDead(Exception):
    pass


def text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def message_handler(listener: Any, on_control: Callable[[bytes], None], name: str) -> Callable[[bytes], None]:
    """Where the messages of pub/sub name `name` go (asked once per name, see `PubSubLoop`):
    the control channel's queries to `on_control`; the internal ``pushsvc:{<ch>}:live``
    channel's to the listener as trusted messages of ``<ch>``; a raw message on a public name
    as untrusted (it can never carry a position)."""
    if name == CONTROL_CHANNEL:
        return on_control
    internal = channel_of_live(name)
    if internal is not None:
        return partial(listener.on_message, internal)  # trusted: `Listener.on_message`'s default
    return partial(listener.on_message, name, trusted=False)


# -- the adapter over redis-py ---------------------------------------------------------------


def check_redis_py() -> None:
    """Raise RuntimeError when redis-py's `Connection` no longer offers what `RawConnection`
    calls (names, and the keyword arguments passed), or when its hiredis parser no longer
    holds what `RawConnection.read_many` drains (checked on bytes fed to a real parser)."""
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
    if HIREDIS_AVAILABLE:
        _check_drain()


#: What `_check_drain` feeds a parser, and what draining it must give: a message, an error
#: reply (a value, not raised), a PONG, and an incomplete reply that stays in the parser.
_DRAIN_FEED = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n-ERR no\r\n+PONG\r\n*2\r\n$4\r\npo"
_DRAIN_REST = b"ng\r\n$0\r\n\r\n"


def _check_drain() -> None:
    conn = Connection(protocol=2)
    found = getattr(conn, "_parser", None)
    if not isinstance(found, _AsyncHiredisParser):
        raise RuntimeError(f"redis-py's Connection no longer uses its hiredis parser ({type(found).__name__})")
    parser: Any = found
    try:
        parser.on_connect(conn)
        if parser._reader.gets() is not NOT_ENOUGH_DATA:  # the drain's stop, else it never ends
            raise RuntimeError("redis-py's hiredis parser no longer answers NOT_ENOUGH_DATA when it has no reply")
        raw = RawConnection.__new__(RawConnection)
        raw._conn, raw._parser, raw._error = conn, parser, None
        parser._reader.feed(_DRAIN_FEED)
        got = raw._drain([])
        parser._reader.feed(_DRAIN_REST)
        rest = raw._drain([])
    except (AttributeError, TypeError) as exc:
        raise RuntimeError(f"redis-py's hiredis parser changed: the pub/sub reader cannot drain it: {exc}") from exc
    if (
        len(got) != 3
        or got[0] != [b"message", b"ch", b"x"]
        or not isinstance(got[1], ResponseError)
        or got[2] != b"PONG"
        or rest != [[b"pong", b""]]
    ):
        raise RuntimeError(f"redis-py's hiredis parser changed: draining it gave {got!r} then {rest!r}")


def _cancels() -> tuple[asyncio.Task[Any] | None, int]:
    """The current task and the cancels requested of it so far (`Task.cancelling`)."""
    task = asyncio.current_task()
    return task, (task.cancelling() if task is not None else 0)


def _raise_swallowed_cancel(task: asyncio.Task[Any] | None, before: int) -> None:
    """Raise the cancellation requested of `task` since it counted `before` cancels, if an
    await of redis-py's swallowed it (see `connect`)."""
    if task is not None and task.cancelling() > before:
        raise asyncio.CancelledError


async def connect(conn: Connection) -> None:
    """``conn.connect()``, raising a cancellation requested meanwhile.  redis-py's awaits
    (connect, its handshake, ``send_command``, ``read_response``) swallow a cancel that
    arrives at some of their steps (the class of redis/redis-py#2551): measured on redis-py
    8.1, a task cancelled k loop steps into ``connect()`` returned normally for about half
    of k in 6..30.  A pub/sub supervisor asked to stop would then run on to its next PING
    deadline, or for ever -- and a shutdown waiting for it with it.  So a cancel counted on
    the task meanwhile closes the connection and is raised here (and in `RawConnection`'s
    ``send`` and ``read``)."""
    task, before = _cancels()
    await conn.connect()  # type: ignore[no-untyped-call]
    try:
        _raise_swallowed_cancel(task, before)
    except asyncio.CancelledError:
        await conn.disconnect(nowait=True)
        raise


class RawConnection:
    """One RESP2 connection used in subscribed mode."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._conn: Connection = pool.make_connection()  # type: ignore[no-untyped-call]
        parser: Any = getattr(self._conn, "_parser", None)
        # Without hiredis (not pushsvc's install) every reply is read through `read`.
        self._parser: Any = parser if isinstance(parser, _AsyncHiredisParser) else None
        self._error: BaseException | None = None  # met while draining, raised by the next read

    async def connect(self) -> None:
        await connect(self._conn)

    async def send(self, *args: str) -> None:
        task, before = _cancels()
        await self._conn.send_command(*args)
        _raise_swallowed_cancel(task, before)

    async def read(self) -> Any:
        """The next reply or push; a server error reply is returned (not raised)."""
        task, before = _cancels()
        try:
            reply = await self._conn.read_response(timeout=math.inf, disconnect_on_error=False)
        except ResponseError as exc:
            reply = exc
        _raise_swallowed_cancel(task, before)
        return reply

    async def read_many(self) -> list[Any]:
        """The next reply, then every reply the parser already holds after it (one await per
        socket read, not per message), in order; each as `read` returns it.  A connection
        error met after some replies is raised by the next call, once those are handled."""
        error = self._error
        if error is not None:
            self._error = None
            raise error
        replies = [await self.read()]
        return replies if self._parser is None else self._drain(replies)

    def _drain(self, replies: list[Any]) -> list[Any]:
        """What redis-py's `_AsyncHiredisParser.read_response` does with a reply it finds
        buffered, for every reply buffered: a connection error is raised (here: deferred
        after the replies before it), a RESP3 push is skipped (none on this RESP2
        connection), anything else -- an error reply too -- is a reply."""
        parser = self._parser
        assert parser is not None
        if not parser._connected:
            return replies
        gets = parser._reader.gets
        push = parser._hiredis_PushNotificationType
        try:
            while True:
                reply = gets()
                if reply is NOT_ENOUGH_DATA:
                    return replies
                if isinstance(reply, RedisConnectionError):
                    raise reply
                if type(reply) is list and reply and isinstance(reply[0], RedisConnectionError):
                    raise reply[0]
                if push is not None and isinstance(reply, push):
                    continue
                replies.append(reply)
        except Exception as exc:  # a protocol error too: after the replies before it
            if not replies:
                raise
            self._error = exc
            return replies

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

    `handler_for(name)` says where the messages of a name go (asked once per name: the
    answer is kept while the name is wanted); those handlers and `on_confirmed(name)` run on
    the reader; `on_evicted(name)` when the server unsubscribed a name by itself; `on_lost()`
    after the connection was lost (before reconnecting).  `group` splits names into commands
    (sharded: one per slot).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        label: str,
        timeout: float,
        ping_interval: float,
        backoff_cap: float,
        handler_for: Callable[[str], Callable[[bytes], None]],
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
        self._handler_for = handler_for
        self._handlers: dict[bytes, Callable[[bytes], None]] = {}  # raw name -> handler_for(name)
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
        message, subscribed, unsubscribed = dialect.message, dialect.subscribed, dialect.unsubscribed
        handlers = self._handlers
        while True:
            for reply in await conn.read_many():
                if isinstance(reply, list) and reply:
                    kind = reply[0]
                    if kind == message:
                        self.messages += 1
                        handler = handlers.get(reply[1])
                        if handler is None:
                            handler = self._handler(reply[1])
                        handler(reply[2])
                    elif kind == subscribed:
                        name = text(reply[1])
                        if self.subs.on_subscribe_reply(name):
                            self._on_confirmed(name)
                    elif kind == unsubscribed:
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

    def _handler(self, raw: bytes) -> Callable[[bytes], None]:
        """`handler_for` of a name, kept: the cache holds at most about the names wanted
        (names dropped leave it when it outgrows them)."""
        handlers = self._handlers
        if len(handlers) >= 2 * len(self.subs.desired) + 16:
            handlers.clear()
        handler = handlers[raw] = self._handler_for(text(raw))
        return handler

    def _on_pong(self, token: bytes) -> None:
        if token == b"barrier":
            if self._barriers_sent:
                for done in self._barriers_sent.popleft():
                    if not done.done():
                        done.set_result(True)
            return
        self._ping_sent_at = None
        self._wake.set()
