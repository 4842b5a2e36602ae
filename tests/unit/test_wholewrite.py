"""`send_whole` against the real Hypercorn (in this process, a real socket): the answer is
byte for byte what Hypercorn's own two ``send`` calls give, in one write instead of two,
and the connection goes on exactly as after Hypercorn's path -- recycled for the next
request (also pipelined ones), closed at ``keep_alive_max_requests`` and when the client
asked, one access-log line with the response; anything else (HEAD, 204, a ``send`` that is
not Hypercorn's HTTP/1.1 stream, an unchecked Hypercorn version) is left to ``send``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import types
from collections.abc import AsyncIterator, Callable
from typing import Any

import h11
import pytest

from pushsvc import wholewrite
from pushsvc.wholewrite import send_whole
from tests.support.inprocess import Served, record_writes, serving

BODY = b'{"events":[{"channel":"c","id":"e-1"}],"id":"e-1"}\n'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY)),
           (b"x-request-id", b"abc")]
REQUEST = b"POST /publish HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n%s\r\n{}"
TIMEOUT = 5.0


class App:
    """Answers every request with 202 and BODY: by `send_whole` (`whole`), else (or when it
    declines) by the two ASGI messages.  Records what `send_whole` returned."""

    def __init__(self, whole: bool, status: int = 202) -> None:
        self.whole = whole
        self.status = status
        self.results: list[bool] = []
        #: Whether Hypercorn's stream was closed (its end handled: the connection recycled or
        #: closed) when the answer's last send returned -- Hypercorn's path does that at once.
        self.ended: list[bool] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        body, headers = (BODY, list(HEADERS)) if self.status != 204 else (b"", [HEADERS[-1]])
        if self.whole:
            done = await send_whole(send, self.status, headers, body)
            self.results.append(done)
            if done:
                self.ended.append(send.__self__.closed)
                return
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
        self.ended.append(send.__self__.closed)


class Server:
    def __init__(self, app: App, served: Served, writes: list[bytes]) -> None:
        self.app, self.served, self.writes = app, served, writes

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self.served.connect()


@pytest.fixture
async def start(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., Any]]:
    """start(app, **config) -> a Hypercorn serving `app` in this process; its socket writes
    recorded in `writes` (shared by the servers of one test)."""
    writes = record_writes(monkeypatch)
    async with contextlib.AsyncExitStack() as stack:

        async def starter(app: App, **settings: Any) -> Server:
            # answers compared byte for byte: no date
            served = await stack.enter_async_context(serving(app, include_date_header=False, **settings))
            return Server(app, served, writes)

        yield starter


async def answer(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    length = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
    return head + (await asyncio.wait_for(reader.readexactly(int(length[1])), TIMEOUT) if length else b"")


async def exchange(server: Server, requests: list[bytes], pipelined: bool = False,
                   expect_close: bool = False) -> list[bytes]:
    """Answers to `requests` on one connection (sent one by one, or all at once); with
    `expect_close`, the server must then close the connection."""
    reader, writer = await server.connect()
    answers = []
    if pipelined:
        writer.write(b"".join(requests))
    for request in requests:
        if not pipelined:
            writer.write(request)
        answers.append(await answer(reader))
    if expect_close:
        assert await asyncio.wait_for(reader.read(1), TIMEOUT) == b""
    writer.close()
    return answers


def request(extra: bytes = b"") -> bytes:
    return REQUEST % extra


async def test_the_answer_is_hypercorns_own_in_one_write_and_the_connection_is_kept_alive(start, monkeypatch):
    formatted: list[bool] = []
    formattable = wholewrite._formattable
    monkeypatch.setattr(wholewrite, "_formattable", lambda *args: formatted.append(formattable(*args)) or formatted[-1])
    whole = await start(App(whole=True))
    plain = await start(App(whole=False))
    got = await exchange(whole, [request(), request(), request()])
    assert whole.app.results == [True, True, True]
    assert whole.app.ended == [True, True, True]
    assert formatted == [True, True, True]  # h11's bytes formatted here (compared with h11's below)
    writes = len(whole.writes)
    expected = await exchange(plain, [request(), request(), request()])
    assert plain.app.ended == [True, True, True]
    assert got == expected
    assert got[0].startswith(b"HTTP/1.1 202 \r\n") and got[0].endswith(BODY)
    assert writes == 3  # one per answer
    assert len(whole.writes) - writes == 6  # Hypercorn's path: head and body apart


async def test_pipelined_requests_are_answered_in_order(start):
    server = await start(App(whole=True))
    got = await exchange(server, [request(), request(b"x-n: 2\r\n"), request()], pipelined=True)
    assert len(got) == 3 and all(a.endswith(BODY) for a in got)
    assert server.app.results == [True, True, True]


@pytest.mark.parametrize("whole", [True, False])
async def test_the_connection_is_closed_at_keep_alive_max_requests(start, whole):
    server = await start(App(whole=whole), keep_alive_max_requests=2)
    got = await exchange(server, [request(), request()], expect_close=True)
    assert b"connection: close" not in got[0].lower()
    assert got[1].lower().count(b"connection: close") == 1


@pytest.mark.parametrize("whole", [True, False])
async def test_a_client_asking_to_close_gets_connection_close_and_the_end(start, whole):
    server = await start(App(whole=whole))
    got = await exchange(server, [request(b"connection: close\r\n")], expect_close=True)
    assert b"connection: close" in got[0].lower() and got[0].endswith(BODY)


async def test_hypercorns_access_log_has_one_line_with_the_response(start, caplog):
    caplog.set_level(logging.INFO, logger="hypercorn.access")
    server = await start(App(whole=True), accesslog=logging.getLogger("hypercorn.access"),
                         access_log_format="%(m)s %(U)s %(s)s")
    await exchange(server, [request(), request()])
    lines = [r.getMessage() for r in caplog.records if r.name == "hypercorn.access"]
    assert lines == ["POST /publish 202", "POST /publish 202"]


async def test_head_and_bodyless_statuses_are_left_to_send(start):
    head = await start(App(whole=True))
    reader, writer = await head.connect()
    writer.write(b"HEAD /publish HTTP/1.1\r\nhost: x\r\n\r\n")
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)).startswith(b"HTTP/1.1 202")
    writer.close()
    no_content = await start(App(whole=True, status=204))
    await exchange(no_content, [request()])
    assert head.app.results == [False] and no_content.app.results == [False]


async def test_any_other_send_is_left_alone():
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    assert await send_whole(send, 202, list(HEADERS), BODY) is False
    assert sent == []


async def test_an_unchecked_hypercorn_version_is_left_to_send(start, monkeypatch):
    monkeypatch.setattr(wholewrite, "_checked", None)
    monkeypatch.setattr(wholewrite, "_classes", None)
    monkeypatch.setattr(wholewrite, "CHECKED_VERSIONS", frozenset({"0.0.1"}))
    server = await start(App(whole=True))
    got = await exchange(server, [request()])
    assert got[0].endswith(BODY) and server.app.results == [False]


# -- h11: the answer formatted here against h11's own three sends ----------------------------


def received(request_bytes: bytes) -> h11.Connection:
    """A server-side h11 connection that has read one request to its end."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(request_bytes)
    while type(connection.next_event()) is not h11.EndOfMessage:
        pass
    return connection


def h11_state(connection: h11.Connection) -> dict[str, Any]:
    """Everything h11 keeps about the connection (readers and writers by type and fields)."""
    state: dict[str, Any] = {}
    for key, value in vars(connection).items():
        if key == "_cstate":
            state[key] = {k: (set(v) if isinstance(v, set) else dict(v) if isinstance(v, dict) else v)
                          for k, v in vars(value).items()}
        elif key == "_receive_buffer":
            state[key] = bytes(value)
        elif key in ("_reader", "_writer") and value is not None and not isinstance(value, types.FunctionType):
            state[key] = (type(value), vars(value))
        else:
            state[key] = value
    return state


def by_h11(connection: h11.Connection, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    data = connection.send(h11.Response(status_code=status, headers=headers)) or b""
    if body:
        data += connection.send(h11.Data(data=body)) or b""
    return data + (connection.send(h11.EndOfMessage()) or b"")


def outcome(answer: Callable[[], bytes]) -> Any:
    try:
        return answer()
    except h11.LocalProtocolError as error:
        return ("refused", str(error))


POST = b"POST /publish HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n%s\r\n{}"
ANSWERS = {
    "kept alive": (POST % b"", 202, HEADERS, BODY, True),
    "pipelined": (POST % b"" + POST % b"x-n: 2\r\n", 202, HEADERS, BODY, True),
    "empty body": (POST % b"", 200, [(b"content-length", b"0")], b"", True),
    "expect 100-continue, body read": (POST % b"expect: 100-continue\r\n", 202, HEADERS, BODY, True),
    "client closes": (POST % b"connection: close\r\n", 202, HEADERS, BODY, False),
    "HTTP/1.0": (b"POST /publish HTTP/1.0\r\ncontent-length: 2\r\n\r\n{}", 202, HEADERS, BODY, False),
    "answer closes": (POST % b"", 202, [*HEADERS, (b"connection", b"close")], BODY, False),
    "chunked answer": (POST % b"", 202, HEADERS[:1], BODY, False),
    "length differs": (POST % b"", 202, [(b"content-length", b"3")], BODY, False),
    "two lengths": (POST % b"", 202, [*HEADERS, (b"content-length", b"%d" % len(BODY))], BODY, False),
    "header injection": (POST % b"", 202, [*HEADERS, (b"x-a", b"1\r\nx-b: 2")], BODY, False),
    "bad header name": (POST % b"", 202, [*HEADERS, (b"x a", b"1")], BODY, False),
    "no content": (POST % b"", 204, [], b"", False),
    "not modified, with a body": (POST % b"", 304, HEADERS, BODY, False),
    "HEAD": (b"HEAD /publish HTTP/1.1\r\nhost: x\r\n\r\n", 202, HEADERS, BODY, False),
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_the_answer_formatted_here_is_h11s_bytes_and_state(name):
    request_bytes, status, headers, body, formatted = ANSWERS[name]
    mine, theirs = received(request_bytes), received(request_bytes)
    assert h11_state(mine) == h11_state(theirs)
    assert wholewrite._formattable(mine, status, headers, body) is formatted
    assert outcome(lambda: wholewrite._h11_answer(mine, status, list(headers), body)) == outcome(
        lambda: by_h11(theirs, status, list(headers), body))
    assert h11_state(mine) == h11_state(theirs)
    if mine.our_state is h11.DONE and mine.their_state is h11.DONE:  # the next request, pipelined
        mine.start_next_cycle(), theirs.start_next_cycle()
        assert type(mine.next_event()) is type(theirs.next_event())
        assert h11_state(mine) == h11_state(theirs)


def test_an_unchecked_h11_version_always_takes_h11s_sends(monkeypatch):
    monkeypatch.setattr(wholewrite, "_h11_checked", None)
    monkeypatch.setattr(wholewrite, "_h11_pieces", None)
    monkeypatch.setattr(wholewrite, "CHECKED_H11_VERSIONS", frozenset({"0.0.1"}))
    assert wholewrite._formattable(received(POST % b""), 202, HEADERS, BODY) is False
