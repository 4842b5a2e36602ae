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
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import h11

__all__ = ["CHECKED_VERSIONS", "send_whole"]

#: Hypercorn versions whose protocol/http_stream.py, protocol/h11.py and
#: asyncio/tcp_server.py were read for this (h11 0.16).
CHECKED_VERSIONS = frozenset({"0.18.0"})

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
    data = _h11_bytes(connection, h11.Response(headers=validated, status_code=status))
    # app_send, http.response.body (more_body=False): the body (if any), then _send_closed.
    if body:
        data += _h11_bytes(connection, h11.Data(data=body))
    data += _h11_bytes(connection, h11.EndOfMessage())
    stream.state = ASGIHTTPState.CLOSED
    await server_send(RawData(data=data))
    await config.log.access(stream.scope, stream.response, time.time() - stream.start_time)
    await protocol_send(StreamClosed(stream_id=stream.stream_id))
    return True
