"""`pushsvc.directwrite` against the real Hypercorn (served in-process on a free loopback
port) and a raw socket client reading the bytes on the wire: chunks written straight to the
transport are the chunked framing h11 would write, the connection stays usable for its next
request (h11's state is intact), and the writer steps aside -- the caller sends through
Hypercorn -- whenever Hypercorn's own path would not write at once: another write holds the
send lock, or the peer is behind (the transport buffers).  HTTP/1.0 and HEAD responses are
never written directly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pushsvc.directwrite import DirectWriter
from tests.support.inprocess import serving

App = Callable[[Any, Any, Any], Awaitable[None]]
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
END = {"type": "http.response.body", "body": b"", "more_body": False}


@contextlib.asynccontextmanager
async def hypercorn(app: App) -> AsyncIterator[int]:
    """`app` served by the real Hypercorn in this process (`tests.support.inprocess`): its port."""

    async def http_only(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":  # no lifespan: Hypercorn goes on without it
            await app(scope, receive, send)

    async with serving(http_only, accesslog=None, errorlog=None) as served:
        yield served.port


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, raw body bytes up to and including the chunked body's end)."""
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        body = await reader.readuntil(b"0\r\n\r\n")
    return head, body


async def get_once(app: App) -> bytes:
    """`app` served, one ``GET /`` on a fresh connection: the raw chunked body."""
    async with hypercorn(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            _, body = await read_response(reader)
        finally:
            writer.close()
    return body


def unchunk(raw: bytes) -> list[bytes]:
    chunks = []
    while True:
        size_line, _, rest = raw.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n"
            return chunks
        chunks.append(rest[:size])
        assert rest[size:size + 2] == b"\r\n"
        raw = rest[size + 2:]


async def test_chunks_go_to_the_transport_in_h11_framing_and_the_connection_serves_its_next_request():
    seen: list[DirectWriter | None] = []

    async def app(scope, receive, send):
        await send(START)
        writer = DirectWriter.of(send)
        seen.append(writer)
        assert writer is not None
        assert writer.write(b"data: one\n\n")
        assert writer.write(b"")  # nothing: an empty chunk would end a chunked body
        await send({"type": "http.response.body", "body": b"data: two\n\n", "more_body": True})
        assert writer.write(b"data: three\n\n")
        await send(END)

    async with hypercorn(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(2):  # keep-alive: h11 saw a whole response, the second one works too
                writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
                head, body = await read_response(reader)
                assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in head.lower()
                assert body == b"b\r\ndata: one\n\n\r\nb\r\ndata: two\n\n\r\nd\r\ndata: three\n\n\r\n0\r\n\r\n"
        finally:
            writer.close()
    assert len(seen) == 2 and all(w is not None for w in seen)


async def test_a_peer_that_does_not_read_makes_the_writer_step_aside_and_nothing_is_lost():
    """Written directly while the kernel takes the bytes; once the transport buffers (the
    peer is behind), `write` refuses and the chunk goes through Hypercorn, which waits for
    the buffer to drain past its high-water mark -- the flow control (and the write deadline
    built on it) stays Hypercorn's."""
    piece = b"x" * 65536
    report: dict[str, int] = {}

    async def app(scope, receive, send):
        await send(START)
        writer = DirectWriter.of(send)
        assert writer is not None
        direct = 0
        while direct < 2000 and writer.write(piece):  # at most 128 MiB: loopback buffers are a few MiB
            direct += 1
        report["buffered"] = writer.transport.get_write_buffer_size()
        report["refused_again"] = not writer.write(piece)  # never adds to what the transport holds
        report["direct"] = direct
        await send({"type": "http.response.body", "body": piece, "more_body": True})  # Hypercorn's flow control
        await send(END)

    async with hypercorn(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**28)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(10):
                while "direct" not in report:  # the peer reads nothing until the writer refused
                    await asyncio.sleep(0.01)
            _, body = await read_response(reader)
        finally:
            writer.close()
    assert 0 < report["direct"] < 2000 and report["buffered"] > 0 and report["refused_again"]
    chunks = unchunk(body)
    assert len(chunks) == report["direct"] + 1 and all(c == piece for c in chunks)


async def test_while_another_write_holds_the_send_lock_the_writer_steps_aside():
    async def app(scope, receive, send):
        await send(START)
        writer = DirectWriter.of(send)
        assert writer is not None
        async with writer.lock:
            assert not writer.write(b"data: held\n\n")
        assert writer.write(b"data: free\n\n")
        await send(END)

    assert unchunk(await get_once(app)) == [b"data: free\n\n"]


@pytest.mark.parametrize("request_line", [b"GET / HTTP/1.0\r\n", b"HEAD / HTTP/1.1\r\nHost: x\r\n"])
async def test_http10_and_head_responses_are_never_written_directly(request_line):
    """HTTP/1.0 has no chunks (h11 writes the bytes as they are, then closes); a HEAD
    response has no body at all: Hypercorn's path is the only right one."""
    seen: list[DirectWriter | None] = []

    async def app(scope, receive, send):
        await send(START)
        seen.append(DirectWriter.of(send))
        await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": True})
        await send(END)

    async with hypercorn(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request_line + b"\r\n")
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                rest = await reader.read() if request_line.endswith(b"1.0\r\n") else b""
        finally:
            writer.close()
    assert seen == [None]
    assert head.startswith(b"HTTP/1.1 200")
    if rest:
        assert rest == b"data: x\n\n"


async def test_a_send_that_is_not_hypercorns_own_or_a_response_not_started_gets_no_writer():
    seen: list[DirectWriter | None] = []

    async def app(scope, receive, send):
        seen.append(DirectWriter.of(send))  # not started: h11 is not sending a body yet

        async def wrapped(message):
            await send(message)

        await send(START)
        seen.append(DirectWriter.of(wrapped))
        await send(END)

    await get_once(app)
    assert seen == [None, None]


@pytest.mark.parametrize("package", ["hypercorn", "h11"])
async def test_a_hypercorn_or_h11_version_not_read_gets_hypercorns_own_path(monkeypatch, package):
    """A newer Hypercorn or h11 may do per-chunk work a direct write would skip: only the
    versions read (`CHECKED_VERSIONS`) are written to directly."""
    import pushsvc.directwrite as directwrite

    real_version = directwrite.version
    monkeypatch.setattr(directwrite, "version", lambda name: "99.0" if name == package else real_version(name))
    monkeypatch.setattr(directwrite, "_classes", None)
    monkeypatch.setattr(directwrite, "_checked", None)
    seen: list[DirectWriter | None] = []

    async def app(scope, receive, send):
        await send(START)
        seen.append(DirectWriter.of(send))
        await send(END)

    await get_once(app)
    assert seen == [None]
