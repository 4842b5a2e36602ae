"""Writing a stream's body chunks straight to Hypercorn's transport (HTTP/1.1).

Each ``http.response.body`` message a stream sends through Hypercorn goes down five
layers before its bytes reach the socket: the ASGI ``send`` (`HTTPStream.app_send`: a
copy of the body, a ``Body`` event), the h11 protocol (``stream_send``), h11's
``Connection.send`` (its state machine, then the chunk framing), a ``RawData`` event, and
the TCP server's ``protocol_send`` (its lock, ``writer.write``, ``await drain()``) -- four
coroutines, three event objects and h11's bookkeeping per write.  Profiled with a write
delay, that path was 30% of a delivery's CPU, more than the ``send`` system call itself.

For a chunked HTTP/1.1 body in progress, h11 has nothing to track per chunk (its state
stays SEND_BODY; only the final ``EndOfMessage`` changes it), so the same bytes --
``<size hex>\\r\\n<data>\\r\\n`` -- can go to the transport directly, when, and only when,
Hypercorn's own path would write them at once too:

* the response is HTTP/1.1 through Hypercorn's asyncio ``TCPServer`` and ``H11Protocol``
  (checked by type, once per stream; HTTP/2, HTTP/1.0, a body with a length, another
  server, a Hypercorn or h11 version not in `CHECKED_VERSIONS`: `DirectWriter.of` returns
  None and the stream uses ``send`` as before);
* h11 is in SEND_BODY with its chunked writer (checked once per stream, after the
  response started);
* per write: nothing else is writing (Hypercorn's send lock is free), the transport is
  not closing, and its buffer is empty.  A peer that does not keep up fills the buffer,
  so its writes take Hypercorn's path, which waits for the buffer to drain -- so the
  write deadline and the slow-consumer rules see a stuck stream exactly as before.

`write` returns False whenever a condition does not hold, and the caller sends the same
chunk with ``send``; the stream's end (``more_body=False``) always goes through ``send``,
so Hypercorn closes or recycles the connection as it always does.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import h11

__all__ = ["DirectWriter"]


#: Hypercorn and h11 versions whose per-chunk path (protocol/http_stream.py, protocol/h11.py,
#: asyncio/tcp_server.py; h11's _connection.py and _writers.py) was read for this: a newer
#: one may add per-chunk work a direct write would skip, so it gets Hypercorn's path until
#: read and added here (as `pushsvc.wholewrite`'s lists).
CHECKED_VERSIONS = frozenset({"0.18.0"})
CHECKED_H11_VERSIONS = frozenset({"0.16.0"})

_classes: tuple[Any, Any, Any, Any, Any] | None = None
_checked: bool | None = None


def _versions_checked() -> bool:
    try:
        return version("hypercorn") in CHECKED_VERSIONS and version("h11") in CHECKED_H11_VERSIONS
    except PackageNotFoundError:  # pragma: no cover - pushsvc depends on both
        return False


def _hypercorn() -> tuple[Any, Any, Any, Any, Any] | None:
    """Hypercorn's classes this module checks against, if Hypercorn is loaded (the core
    imports no web framework: a ``send`` can only be Hypercorn's once Hypercorn runs) and
    is a version that was read (`CHECKED_VERSIONS`)."""
    global _classes, _checked
    if _classes is not None or _checked is False:
        return _classes
    if "hypercorn.asyncio.tcp_server" not in sys.modules:
        return None
    _checked = _versions_checked()
    if not _checked:
        return None
    try:
        from h11._writers import ChunkedWriter
        from hypercorn.asyncio.tcp_server import TCPServer
        from hypercorn.protocol.h11 import H11Protocol
        from hypercorn.protocol.http_stream import ASGIHTTPState, HTTPStream
    except ImportError:  # pragma: no cover - a checked version has them all
        _checked = False
        return None
    _classes = (HTTPStream, ASGIHTTPState.RESPONSE, H11Protocol, ChunkedWriter, TCPServer)
    return _classes


Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class DirectWriter:
    """The transport under one HTTP/1.1 response whose chunked body is in progress."""

    __slots__ = ("lock", "transport")

    def __init__(self, transport: asyncio.WriteTransport, lock: asyncio.Lock) -> None:
        self.transport = transport
        self.lock = lock

    @classmethod
    def of(cls, send: Send) -> DirectWriter | None:
        """The writer under ``send`` -- Hypercorn's own ASGI ``send`` of a response that has
        started -- or None when its body cannot be written directly (see the module)."""
        classes = _hypercorn()
        if classes is None:
            return None
        HTTPStream, RESPONSE, H11Protocol, ChunkedWriter, TCPServer = classes
        stream: Any = getattr(send, "__self__", None)
        if type(stream) is not HTTPStream or getattr(send, "__func__", None) is not HTTPStream.app_send:
            return None
        if stream.state is not RESPONSE or stream.closed:
            return None
        protocol: Any = getattr(stream.send, "__self__", None)
        if type(protocol) is not H11Protocol:
            return None
        connection = protocol.connection
        if type(connection) is not h11.Connection or connection.our_state is not h11.SEND_BODY:
            return None
        if type(getattr(connection, "_writer", None)) is not ChunkedWriter:
            return None
        server: Any = getattr(protocol.send, "__self__", None)
        if type(server) is not TCPServer or getattr(protocol.send, "__func__", None) is not TCPServer.protocol_send:
            return None
        lock = getattr(server, "send_lock", None)
        transport = getattr(getattr(server, "writer", None), "transport", None)
        if type(lock) is not asyncio.Lock or transport is None:
            return None
        return cls(transport, lock)

    def write(self, chunk: bytes) -> bool:
        """Write `chunk` as one chunk of the body if Hypercorn would write it at once too:
        True if written, False (nothing written) to send it through Hypercorn."""
        transport = self.transport
        if self.lock.locked() or transport.is_closing() or transport.get_write_buffer_size():
            return False
        if not chunk:
            return True  # h11 writes nothing for an empty chunk (it would end the body)
        try:
            transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        except (ConnectionError, RuntimeError):  # Hypercorn's path meets it too, and closes
            return False
        return True
