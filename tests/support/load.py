"""Load helpers shared by tests and bench scripts: stalled readers, RSS, batch publishing."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from .helpers import TOKEN
from .sse_client import SSEClient, StreamClosed
from .whatwg import Event


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def stalled_reader(port: int, channel: str, rcvbuf: int = 4096, last_event_id: str | None = None) -> socket.socket:
    """Open a stream, read its headers, then never read again (a phone in a tunnel)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    resume = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    sock.sendall(f"GET /stream?channel={channel} HTTP/1.1\r\nHost: x\r\n{resume}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed before headers")
        head += chunk
    return sock


async def publish_bulk(base: str, channel: str, total_bytes: int, event_bytes: int, batch: int = 50,
                       token: str = TOKEN) -> int:
    """Publish about `total_bytes` of events stamped with their send time; the count."""
    count = max(1, total_bytes // event_bytes)
    filler = "x" * event_bytes
    async with httpx.AsyncClient(timeout=30) as http:
        for start in range(0, count, batch):
            body = [
                {"channel": channel, "data": {"n": n, "t": time.time(), "pad": filler}}
                for n in range(start, min(count, start + batch))
            ]
            response = await http.post(base + "/publish", json=body, headers={"Authorization": f"Bearer {token}"})
            response.raise_for_status()
    return count


async def read_like_a_browser(port: int, channel: str, client: SSEClient, count: int,
                              on_event: Callable[[Event], None] | None = None) -> list[int]:
    """Read `count` events ("n" in their data); when the server cuts the stream (the reader
    fell behind), reconnect with the last id, as EventSource does.  The values of "n"."""
    values: list[int] = []
    while len(values) < count:
        try:
            event = await client.next_event(timeout=60)
        except StreamClosed:
            await client.close()
            client = await SSEClient.open(port, [channel], last_event_id=client.last_event_id)
            continue
        if on_event is not None:
            on_event(event)
        values.append(json.loads(event.data)["n"])
    await client.close()
    return values


class PeakRSS:
    """Samples a process's RSS every 50 ms while the `async with` block runs: `before` (on
    entry) and `peak` (the highest sample, `before` included); `growth` is peak - before."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = self.peak = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def growth(self) -> int:
        return self.peak - self.before

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self.pid))
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> PeakRSS:
        self.before = self.peak = rss_bytes(self.pid)
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
