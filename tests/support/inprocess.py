"""Hypercorn in this process, on a real loopback socket, for tests that look at what it
writes: `serving(app, **config)` serves `app` (listening before it returns: the socket is
bound and listening before Hypercorn takes it over), `record_writes` lists every chunk
Hypercorn's TCP server writes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypercorn.asyncio import serve
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.config import Config
from hypercorn.events import RawData

TIMEOUT = 10.0


def record_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every non-empty write of Hypercorn's asyncio TCP server (each ``RawData`` it sends to
    its transport), in order, from now until the test ends."""
    writes: list[bytes] = []
    protocol_send = TCPServer.protocol_send

    async def recording(self: TCPServer, event: Any) -> None:
        if isinstance(event, RawData) and event.data:
            writes.append(bytes(event.data))
        await protocol_send(self, event)

    monkeypatch.setattr(TCPServer, "protocol_send", recording)
    return writes


class Served:
    def __init__(self, port: int) -> None:
        self.port = port

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), TIMEOUT)


@asynccontextmanager
async def serving(app: Any, **settings: Any) -> AsyncIterator[Served]:
    """`app` served by Hypercorn (asyncio worker, this loop) with `settings` on its Config."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # Hypercorn owns (and closes) the descriptor
    for key, value in settings.items():
        setattr(config, key, value)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(serve(app, config, shutdown_trigger=stop.wait))
    try:
        yield Served(port)
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT)
