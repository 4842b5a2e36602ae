"""The pub/sub reader drives redis-py's `Connection` by hand: fail loudly when a new
redis-py changes what it calls, and check the subscription bookkeeping alone."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import hiredis
import pytest
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio.connection import Connection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError

from pushsvc.broker import pubsub
from pushsvc.broker.pubsub import PubSubLoop, RawConnection, Subscriptions, check_redis_py, message_handler
from pushsvc.wire import CONTROL_CHANNEL, live_channel


def test_the_installed_redis_py_offers_what_the_pubsub_adapter_calls():
    check_redis_py()


def test_a_redis_py_without_read_responses_keywords_is_refused(monkeypatch: pytest.MonkeyPatch):
    async def read_response(self: Connection, timeout: float | None = None) -> None:
        return None

    monkeypatch.setattr(Connection, "read_response", read_response)
    with pytest.raises(RuntimeError, match="disconnect_on_error"):
        check_redis_py()
    monkeypatch.setattr(Connection, "send_command", None)
    with pytest.raises(RuntimeError, match="send_command"):
        pubsub.check_redis_py()


def test_a_name_dropped_and_added_again_is_confirmed_by_the_second_reply_only():
    subs = Subscriptions()
    subs.desired.add("a")
    assert subs.changes() == (["a"], [])
    subs.desired.discard("a")
    assert subs.changes() == ([], ["a"])
    subs.desired.add("a")
    assert subs.changes() == (["a"], [])
    assert not subs.on_subscribe_reply("a")  # the first SUBSCRIBE's answer
    assert not subs.on_unsubscribe_reply("a")  # our own UNSUBSCRIBE: not an eviction
    assert subs.on_subscribe_reply("a")
    assert subs.confirmed == {"a"}


def test_an_unprompted_unsubscribe_is_an_eviction():
    subs = Subscriptions()
    subs.desired.add("a")
    subs.changes()
    subs.on_subscribe_reply("a")
    assert subs.on_unsubscribe_reply("a")
    assert "a" not in subs.desired and "a" not in subs.confirmed


# -- draining the hiredis parser (one await per socket read) ----------------------------------

MESSAGE = b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"


def message(name: bytes, payload: bytes) -> bytes:
    return MESSAGE % (len(name), name, len(payload), payload)


def fed_connection() -> tuple[RawConnection, asyncio.StreamReader]:
    """A RawConnection whose socket is a StreamReader the test feeds (nothing connects)."""
    raw = RawConnection(ConnectionPool(protocol=2))
    stream = asyncio.StreamReader()
    raw._conn._reader = stream  # what connect() would set
    raw._conn._parser.on_connect(raw._conn)
    return raw, stream


def test_the_installed_redis_py_reads_pubsub_through_hiredis():
    assert isinstance(RawConnection(ConnectionPool(protocol=2))._parser, _AsyncHiredisParser)


async def test_one_read_gives_every_buffered_reply_in_order_and_leaves_a_partial_one():
    raw, stream = fed_connection()
    stream.feed_data(message(b"a", b"1") + message(b"b", b"2") + b"-ERR no\r\n+PONG\r\n" + message(b"a", b"3")[:-4])
    got = await raw.read_many()
    assert got[:2] == [[b"message", b"a", b"1"], [b"message", b"b", b"2"]]
    assert isinstance(got[2], ResponseError) and got[3:] == [b"PONG"]
    stream.feed_data(message(b"a", b"3")[-4:] + message(b"c", b"4"))
    assert await raw.read_many() == [[b"message", b"a", b"3"], [b"message", b"c", b"4"]]


@pytest.mark.parametrize("bad", [b"-ERR max number of clients reached\r\n", b"!not resp\r\n"])
async def test_a_broken_reply_after_messages_is_raised_once_they_are_handled(bad: bytes):
    raw, stream = fed_connection()
    stream.feed_data(message(b"a", b"1") + message(b"a", b"2") + bad)
    assert await raw.read_many() == [[b"message", b"a", b"1"], [b"message", b"a", b"2"]]
    with pytest.raises((RedisConnectionError, InvalidResponse)):
        await raw.read_many()


def test_a_parser_that_no_longer_answers_not_enough_data_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(pubsub, "NOT_ENOUGH_DATA", object())
    with pytest.raises(RuntimeError, match="NOT_ENOUGH_DATA"):
        check_redis_py()


def test_a_parser_without_its_reader_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(_AsyncHiredisParser, "on_connect", lambda self, connection: None)
    with pytest.raises(RuntimeError, match="cannot drain"):
        check_redis_py()


def test_a_parser_that_raises_error_replies_is_refused(monkeypatch: pytest.MonkeyPatch):
    def on_connect(self: _AsyncHiredisParser, connection: Connection) -> None:
        self._reader = hiredis.Reader(notEnoughData=pubsub.NOT_ENOUGH_DATA)  # no replyError: hiredis's own
        self._connected = True

    monkeypatch.setattr(_AsyncHiredisParser, "on_connect", on_connect)
    with pytest.raises(RuntimeError, match="draining it gave"):
        check_redis_py()


# -- the reader loop ---------------------------------------------------------------------------


class Batches:
    """A RawConnection stand-in: `read_many` gives the batches, then blocks forever."""

    def __init__(self, *batches: list[Any]) -> None:
        self.batches = list(batches)
        self.done = asyncio.Event()

    async def read_many(self) -> list[Any]:
        if self.batches:
            return self.batches.pop(0)
        self.done.set()
        await asyncio.Future()
        raise AssertionError


class Listener:
    def __init__(self) -> None:
        self.got: list[tuple[str, bytes, bool]] = []

    def on_message(self, channel: str, payload: bytes, trusted: bool = True) -> None:
        self.got.append((channel, payload, trusted))


async def test_the_reader_routes_each_message_by_its_name_in_order_asking_once_per_name():
    listener = Listener()
    control: list[bytes] = []
    asked: list[str] = []
    confirmed: list[str] = []

    def handler_for(name: str) -> Any:
        asked.append(name)
        return message_handler(listener, control.append, name)

    def on_confirmed(name: str) -> None:
        confirmed.append(f"{name}@{len(listener.got)}")

    loop = PubSubLoop(ConnectionPool(protocol=2), label="t", timeout=1, ping_interval=1, backoff_cap=1,
                      handler_for=handler_for, on_confirmed=on_confirmed)
    loop.subs.desired.update(["ch", live_channel("ch")])
    loop.subs.changes()
    live = live_channel("ch").encode()
    conn = Batches(
        [[b"subscribe", live, 1], [b"message", live, b"1"], [b"message", b"ch", b"raw"]],
        [[b"message", live, b"2"], [b"message", CONTROL_CHANNEL.encode(), b"q"], [b"subscribe", b"ch", 2]],
    )
    reader = asyncio.ensure_future(loop._read(conn))  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        await conn.done.wait()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    assert listener.got == [("ch", b"1", True), ("ch", b"raw", False), ("ch", b"2", True)]
    assert control == [b"q"]
    assert confirmed == [f"{live_channel('ch')}@0", "ch@3"]
    assert sorted(asked) == sorted([live_channel("ch"), "ch", CONTROL_CHANNEL])
    assert loop.messages == 4


async def test_the_handler_cache_stays_about_the_size_of_the_wanted_names():
    listener = Listener()
    loop = PubSubLoop(ConnectionPool(protocol=2), label="t", timeout=1, ping_interval=1, backoff_cap=1,
                      handler_for=lambda name: message_handler(listener, lambda _: None, name),
                      on_confirmed=lambda name: None)
    conn = Batches([[b"message", b"ch%d" % i, b"x"] for i in range(100)])
    reader = asyncio.ensure_future(loop._read(conn))  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        await conn.done.wait()
    reader.cancel()
    await asyncio.gather(reader, return_exceptions=True)
    assert len(listener.got) == 100 and listener.got[-1] == ("ch99", b"x", False)
    assert len(loop._handlers) <= 16


def test_the_hubs_messages_are_trusted_unless_said_otherwise():
    """`message_handler` leaves `trusted` to `Listener.on_message`'s default for the live channel."""
    from pushsvc.broker import Listener as ListenerProtocol
    from pushsvc.hub import Hub

    assert inspect.signature(Hub.on_message).parameters["trusted"].default is True
    assert inspect.signature(ListenerProtocol.on_message).parameters["trusted"].default is True
