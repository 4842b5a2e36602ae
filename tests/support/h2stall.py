"""An HTTP/2 client (h2c with prior knowledge, on a plain socket) that opens streams and
never lets the server send them a byte of body: its streams' flow-control window is 0.
It keeps reading the socket, so it sees what the server does with them (RST_STREAM)."""

from __future__ import annotations

import asyncio
import contextlib

import h2.config
import h2.connection
import h2.events
import h2.settings


class H2cReader:
    """What both h2c test clients share: a task reading the socket (`_task`), `changed` set
    after each read, a bounded wait for a condition, and close."""

    writer: asyncio.StreamWriter
    changed: asyncio.Event
    _task: asyncio.Task[None] | None

    async def wait_for(self, predicate: object, timeout: float) -> None:
        async def loop() -> None:
            while not predicate():  # type: ignore[operator]
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class StalledH2Client(H2cReader):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        self.status: dict[int, int] = {}
        self.reset: set[int] = set()
        self.body_bytes = 0
        self.closed = False
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, port: int) -> StalledH2Client:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        client = cls(reader, writer)
        client.conn.initiate_connection()
        await client._flush()
        client._task = asyncio.create_task(client._read_forever())
        return client

    async def _flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def open(self, path: str) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [(":method", "GET"), (":scheme", "http"),
                                           (":authority", "127.0.0.1"), (":path", path)], end_stream=True)
        await self._flush()
        return stream_id

    async def _read_forever(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                self.closed = True
                self.changed.set()
                return
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    self.status[event.stream_id] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.StreamReset):
                    self.reset.add(event.stream_id)
                elif isinstance(event, h2.events.DataReceived):
                    self.body_bytes += len(event.data)  # never acknowledged: the window stays shut
            await self._flush()  # SETTINGS and PING acks only
            self.changed.set()
