"""A small answer with a length (the fast door's ``202`` to ``POST /publish``) written to
Hypercorn's HTTP/1.1 connection in one piece.

Through the ASGI ``send``, such an answer is two messages (``http.response.start``, then
the body with ``more_body=False``) and goes down Hypercorn's layers three times: the
status line and headers, the body, and the (empty, for a body with a length) end of the
message -- each an event object, h11's ``Connection.send``, a ``RawData`` event and the TCP
server's ``protocol_send`` (its lock, ``writer.write``, ``await drain()``): two ``send``
system calls on the socket, each also running the loopback receive path in the kernel,
and a dozen coroutines.  Measured on the single-event publish bench
(`bench/sse_bench.py --only publish`), that path was the largest part of a request's CPU.

`send_whole` does what those two ``send`` calls do -- the same h11 events on the same h11
connection, in the same order (so h11's state machine, its keep-alive decision and its
``Connection: close`` are exactly its own), Hypercorn's own response headers and its
``Connection: close`` at ``keep_alive_max_requests``, the stream's state, its access log
and its end (``StreamClosed``: Hypercorn recycles or closes the connection as always) --
but writes the bytes once, through Hypercorn's own ``protocol_send`` (its lock, its
``drain``, its handling of a broken connection).

Only where the code was read: the Hypercorn versions in `CHECKED_VERSIONS`, its asyncio
``TCPServer`` with ``H11Protocol`` (HTTP/1.x), every object checked by type and every
bound method by identity, the stream still waiting for its answer, a status of 200 or
more whose body is not suppressed (``HEAD``, 204, 304).  Otherwise `send_whole` returns
False, having done nothing, and the caller sends the two messages as before (HTTP/2,
another server, another Hypercorn).

The one difference from Hypercorn's path: when the write fails (the peer left), the
stream is already marked answered, so Hypercorn's access log has the response's line
instead of a line without a response and then the response's line.

h11's three ``send`` calls alone cost about as much as the rest of the answer (17 µs per
answer measured, of which building and validating the ``Response`` event 6 µs).  In the
common case -- a kept-alive HTTP/1.1 request fully received, nothing pending (no
``Expect: 100-continue`` wait, no protocol switch), an answer framed by its
``Content-Length`` with no ``Connection`` or ``Transfer-Encoding`` header -- h11 adds
nothing to the headers and its writer only formats them, so `_h11_answer` formats the
same bytes here (every header checked by h11's own field-name and field-value patterns)
and moves h11's state machine (``ConnectionState.process_event``, then the connection's
writer) exactly as the three sends would; in every other case it calls h11's ``send``.
That part reaches into h11's internals, so it runs only on the h11 versions in
`CHECKED_H11_VERSIONS`, and h11 must end where its own sends would (DONE, no writer), or
the answer is an error.  tests/unit/test_wholewrite.py compares the bytes and the whole
state of two h11 connections, one answered each way, for kept-alive, closing, HTTP/1.0,
``Expect: 100-continue`` and pipelined requests.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import h11

__all__ = ["CHECKED_H11_VERSIONS", "CHECKED_VERSIONS", "send_whole"]

#: Hypercorn versions whose protocol/http_stream.py, protocol/h11.py and
#: asyncio/tcp_server.py were read for this (h11 0.16).
CHECKED_VERSIONS = frozenset({"0.18.0"})
#: h11 versions whose _connection.py, _state.py, _headers.py and _writers.py were read for
#: `_h11_answer`'s own formatting (others: h11's ``send`` every time).
CHECKED_H11_VERSIONS = frozenset({"0.16.0"})

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_classes: tuple[Any, ...] | None = None
_checked: bool | None = None


def _hypercorn() -> tuple[Any, ...] | None:
    """Hypercorn's pieces this module uses, if a checked version is installed."""
    global _classes, _checked
    if _checked is None:
        try:
            _checked = version("hypercorn") in CHECKED_VERSIONS
        except PackageNotFoundError:  # pragma: no cover - pushsvc depends on Hypercorn
            _checked = False
        if _checked:
            try:
                from hypercorn.asyncio.tcp_server import TCPServer
                from hypercorn.events import RawData
                from hypercorn.protocol.events import StreamClosed
                from hypercorn.protocol.h11 import H11Protocol
                from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
                from hypercorn.utils import build_and_validate_headers, suppress_body
            except ImportError:  # pragma: no cover - a checked version has them all
                _checked = False
            else:
                _classes = (
                    HTTPStream, ASGIHTTPState, H11Protocol, TCPServer, RawData, StreamClosed,
                    build_and_validate_headers, suppress_body,
                )
    return _classes


_h11_pieces: tuple[Any, ...] | None = None
_h11_checked: bool | None = None


def _h11() -> tuple[Any, ...] | None:
    """h11's internals `_h11_answer` uses, if a checked version is installed."""
    global _h11_pieces, _h11_checked
    if _h11_checked is None:
        try:
            _h11_checked = version("h11") in CHECKED_H11_VERSIONS
        except PackageNotFoundError:  # pragma: no cover - Hypercorn depends on h11
            _h11_checked = False
        if _h11_checked:
            try:
                from h11._headers import _field_name_re, _field_value_re
                from h11._writers import write_any_response
            except ImportError:  # pragma: no cover - a checked version has them
                _h11_checked = False
            else:
                _h11_pieces = (_field_name_re.fullmatch, _field_value_re.fullmatch, write_any_response)
    return _h11_pieces


#: Header fields already found valid by h11's patterns (the content type, Hypercorn's date of
#: this second...): forgotten wholesale when it fills up (request ids are never the same).
_valid_fields: set[tuple[bytes, bytes]] = set()
_MOST_VALID_FIELDS = 256


def _formattable(connection: h11.Connection, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
    """Whether h11 would write this answer, on this connection, as its headers as they are
    and the body (the common case of the module docstring)."""
    pieces = _h11()
    if pieces is None:
        return False
    name_ok, value_ok, write_any_response = pieces
    cstate = getattr(connection, "_cstate", None)
    if (
        connection.our_state is not h11.SEND_RESPONSE or connection.their_state is not h11.DONE
        or connection.their_http_version != b"1.1" or connection.client_is_waiting_for_100_continue
        or getattr(connection, "_request_method", None) in (b"HEAD", b"CONNECT")
        or getattr(connection, "_writer", None) is not write_any_response
        or cstate is None or cstate.keep_alive is not True or cstate.pending_switch_proposals
        or not 200 <= status <= 999 or status in (204, 304)
    ):
        return False
    length = None
    for field in headers:
        name, value = field
        lower = name.lower()
        if lower == b"content-length":
            if length is not None:
                return False
            length = value
        elif lower in (b"connection", b"transfer-encoding", b"host"):
            return False
        if field not in _valid_fields:
            if not (name_ok(name) and value_ok(value)):
                return False
            if len(_valid_fields) >= _MOST_VALID_FIELDS:
                _valid_fields.clear()
            _valid_fields.add(field)
    return length == b"%d" % len(body)


def _h11_answer(connection: h11.Connection, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """The bytes of h11's ``send`` of the ``Response``, the body (if any) and
    ``EndOfMessage``, with h11's state moved as those sends move it."""
    if not _formattable(connection, status, headers, body):
        data = _h11_bytes(connection, h11.Response(headers=headers, status_code=status))
        if body:
            data += _h11_bytes(connection, h11.Data(data=body))
        return data + _h11_bytes(connection, h11.EndOfMessage())
    # What Connection._process_event does for these three events here: the state machine's
    # transitions (SEND_RESPONSE -> SEND_BODY -> DONE), then the writer for the new state.
    cstate: Any = connection._cstate
    old_states = dict(cstate.states)
    cstate.process_event(h11.SERVER, h11.Response)
    if body:
        cstate.process_event(h11.SERVER, h11.Data)
    cstate.process_event(h11.SERVER, h11.EndOfMessage)
    connection._respond_to_state_changes(old_states)
    if connection.our_state is not h11.DONE or connection._writer is not None:
        raise RuntimeError(f"h11 did not end the answer as its own send would ({connection.our_state})")
    # write_any_response + write_headers: the status without reason, each field as given.
    fields = b"".join([b"%s: %s\r\n" % field for field in headers])
    return b"HTTP/1.1 %d \r\n%s\r\n%s" % (status, fields, body)


def _h11_bytes(connection: h11.Connection, event: Any) -> bytes:
    """h11's bytes for `event`, as Hypercorn's ``_send_h11_event``: nothing when h11 refuses
    it because the peer's side is in error."""
    try:
        data = connection.send(event)
    except h11.LocalProtocolError:
        if connection.their_state != h11.ERROR:
            raise
        return b""
    return data or b""


async def send_whole(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
    """The answer (`status`, `headers`, `body`, complete) through `send` -- Hypercorn's own
    ASGI ``send`` of an HTTP/1.x stream that has not answered yet -- in one write: True;
    or False, nothing done, when that is not what `send` is (see the module)."""
    classes: Any = _hypercorn()
    if classes is None:
        return False
    (HTTPStream, ASGIHTTPState, H11Protocol, TCPServer, RawData, StreamClosed,
     build_and_validate_headers, suppress_body) = classes
    stream: Any = getattr(send, "__self__", None)
    if type(stream) is not HTTPStream or getattr(send, "__func__", None) is not HTTPStream.app_send:
        return False
    if stream.closed or stream.state is not ASGIHTTPState.REQUEST or status < 200:
        return False
    if suppress_body(stream.scope["method"], status):
        return False
    protocol_send = stream.send
    protocol: Any = getattr(protocol_send, "__self__", None)
    if type(protocol) is not H11Protocol or getattr(protocol_send, "__func__", None) is not H11Protocol.stream_send:
        return False
    connection = protocol.connection
    if type(connection) is not h11.Connection or connection.our_state is not h11.SEND_RESPONSE:
        return False
    if protocol.stream is not stream:
        return False
    server_send = protocol.send
    server: Any = getattr(server_send, "__self__", None)
    if type(server) is not TCPServer or getattr(server_send, "__func__", None) is not TCPServer.protocol_send:
        return False

    # HTTPStream.app_send, http.response.start: the stream's response, its headers checked.
    stream.response = {"type": "http.response.start", "status": status, "headers": headers}
    validated = build_and_validate_headers(headers)
    # H11Protocol.stream_send, Response: Hypercorn's own headers, and its close at the limit.
    config = protocol.config
    validated += config.response_headers("h11")
    if protocol.keep_alive_requests >= config.keep_alive_max_requests:
        validated.append((b"connection", b"close"))
    # app_send, http.response.body (more_body=False): the body (if any), then _send_closed.
    data = _h11_answer(connection, status, validated, body)
    stream.state = ASGIHTTPState.CLOSED
    await server_send(RawData(data=data))
    await config.log.access(stream.scope, stream.response, time.time() - stream.start_time)
    await protocol_send(StreamClosed(stream_id=stream.stream_id))
    return True
