"""A raw HTTP/1.1 SSE client over a socket: reads the stream as bytes and parses it with
the WHATWG rules, so tests see exactly what a browser would."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

from .whatwg import Event, Parser


class StreamClosed(Exception):
    pass


class SSEClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.parser = Parser()
        self.raw = bytearray()
        self.body = bytearray()  # non-stream bodies (JSON errors)
        self._events: list[Event] = []
        self.ended = False
        self.completed = False  # the response ended with its final chunk (not a reset)
        self.chunked = False

    @classmethod
    async def open(
        cls, port: int, channels: list[str] | None = None, last_event_id: str | None = None,
        query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
        path: str = "/stream", timeout: float = 5.0, host: str = "127.0.0.1",
    ) -> SSEClient:
        params: list[tuple[str, str]] = [("channel", c) for c in channels or []]
        params += list((query or {}).items())
        target = path + ("?" + urlencode(params) if params else "")
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        client = cls(reader, writer)
        lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
        if last_event_id is not None:
            lines.append(f"Last-Event-ID: {last_event_id}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        await asyncio.wait_for(client._read_head(), timeout)
        return client

    async def _read_head(self) -> None:
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
        self.chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        length = self.headers.get("content-length")
        if length is not None or not self.headers.get("content-type", "").startswith("text/event-stream"):
            size = int(length or "0")
            self.body = bytearray(await self.reader.readexactly(size)) if size else bytearray()
            self.raw += self.body
            self._events += self.parser.feed(bytes(self.body))
            self.ended = self.completed = True

    async def _read_chunk(self) -> bytes:
        if not self.chunked:
            data = await self.reader.read(65536)
            if not data:
                self.ended = True
            return data
        size_line = await self.reader.readline()
        if not size_line:
            self.ended = True
            return b""
        size = int(size_line.strip().split(b";")[0], 16)
        data = await self.reader.readexactly(size + 2)
        if size == 0:
            self.ended = True
            self.completed = True
        return data[:-2]

    async def _pump(self) -> None:
        try:
            data = await self._read_chunk()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.ended = True
            return
        self.raw += data
        self._events += self.parser.feed(data)

    async def next_event(self, timeout: float = 5.0) -> Event:
        async def wait() -> Event:
            while not self._events:
                if self.ended:
                    raise StreamClosed("the stream ended")
                await self._pump()
            return self._events.pop(0)

        return await asyncio.wait_for(wait(), timeout)

    async def events(self, count: int, timeout: float = 10.0) -> list[Event]:
        async def collect() -> list[Event]:
            return [await self.next_event(timeout) for _ in range(count)]

        return await asyncio.wait_for(collect(), timeout)

    async def until_end(self, timeout: float = 10.0) -> list[Event]:
        """Read until the server ends the response; every event received meanwhile."""
        async def drain() -> list[Event]:
            while not self.ended:
                await self._pump()
            events, self._events = self._events, []
            return events

        return await asyncio.wait_for(drain(), timeout)

    async def until(self, predicate: object, timeout: float = 5.0) -> None:
        """Pump until predicate(self) is true (e.g. a comment or an id arrived)."""
        async def loop() -> None:
            while not predicate(self):  # type: ignore[operator]
                if self.ended:
                    raise StreamClosed("the stream ended")
                await self._pump()

        await asyncio.wait_for(loop(), timeout)

    async def wait_open(self, timeout: float = 5.0) -> None:
        """Until the stream is synced: its first id (or any event) has arrived."""
        await self.until(lambda c: c.parser.last_event_id != "" or c._events, timeout)

    @property
    def last_event_id(self) -> str:
        return self.parser.last_event_id

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
