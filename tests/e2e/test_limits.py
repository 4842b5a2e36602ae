"""Configurable limits: streams per process, channels per stream, slow request headers."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from tests.support.helpers import metric
from tests.support.procs import ROOT
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.e2e


async def test_over_capacity_stream_gets_200_with_a_jittered_retry_and_ends(service_factory, http):
    service = service_factory({"PUSHSVC_MAX_STREAMS": "3", "PUSHSVC_RETRY_MS": "1000"})
    held = [await SSEClient.open(service.port, ["full"]) for _ in range(3)]
    try:
        await asyncio.gather(*[c.wait_open() for c in held])
        refused = await SSEClient.open(service.port, ["full"])
        assert refused.status == 200  # a 503 would make EventSource give up for good
        assert await refused.until_end(timeout=5) == []
        assert refused.completed and 1600 <= (refused.parser.retry or 0) <= 2400
        await refused.close()
        assert await metric(http, service, "pushsvc_streams_refused_capacity_total") == 1
    finally:
        await asyncio.gather(*[c.close() for c in held])


async def test_too_many_channels_per_stream_gets_400(service_factory):
    service = service_factory({"PUSHSVC_MAX_CHANNELS_PER_STREAM": "3"})
    client = await SSEClient.open(service.port, ["a", "b", "c", "d"])
    try:
        assert client.status == 400 and b"too_many_channels" in client.body
    finally:
        await client.close()


async def test_client_that_never_finishes_its_headers_is_disconnected(service_factory, tmp_path: Path):
    config = tmp_path / "hypercorn.toml"
    toml = (ROOT / "hypercorn.toml").read_text()
    config.write_text(toml.replace("keep_alive_timeout = 20", "keep_alive_timeout = 1"))
    service = service_factory(config=config)
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    try:
        sock.sendall(b"GET /stream?channel=a HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never finished
        started = time.monotonic()
        assert sock.recv(1024) == b""  # the server closes the connection
        assert time.monotonic() - started < 8
    finally:
        sock.close()
