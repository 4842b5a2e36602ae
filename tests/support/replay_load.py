"""Stalled streams that resume from an old id on a channel full of large events: the
process's memory while they (do not) replay.  Shared by tests/e2e/test_replay_bounds.py
and bench/replay_memory.py (which also runs it against another checkout for a before/after)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import httpx

from .helpers import TOKEN
from .load import rss_bytes, stalled_reader
from .procs import Service


@dataclass
class ReplayMemory:
    before: int  # RSS with the history stored, before the streams open
    peak: int  # highest RSS sampled while the stalled streams sit there
    first_id: str


async def fill_history(service: Service, channel: str, count: int, event_bytes: int) -> str:
    """Publish `count` events of about `event_bytes` each; the first event's id."""
    pad = "x" * (event_bytes - 100)
    per_request = max(1, (900 * 1024) // event_bytes)
    first = ""
    async with httpx.AsyncClient(timeout=30) as http:
        for start in range(0, count, per_request):
            body = [{"channel": channel, "data": {"n": n, "pad": pad}}
                    for n in range(start, min(count, start + per_request))]
            response = await http.post(service.base + "/publish", json=body,
                                       headers={"Authorization": f"Bearer {TOKEN}"})
            response.raise_for_status()
            first = first or response.json()["events"][0]["id"]
    return first


async def stalled_replays(service: Service, channel: str, first_id: str, streams: int,
                          seconds: float) -> tuple[int, int, list[socket.socket]]:
    """Open `streams` stalled readers resuming from `first_id`; (RSS before, peak RSS over
    `seconds`, the sockets -- the caller closes them)."""
    assert service.proc is not None
    pid = service.proc.pid
    before = rss_bytes(pid)
    socks = [await asyncio.to_thread(stalled_reader, service.port, channel, 4096, first_id)
             for _ in range(streams)]
    peak = before
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        peak = max(peak, rss_bytes(pid))
        await asyncio.sleep(0.05)
    return before, peak, socks
