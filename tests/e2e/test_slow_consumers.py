"""Clients that stop reading are cut, memory stays bounded, healthy clients get everything."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.helpers import metric
from tests.support.load import publish_bulk, rss_bytes, stalled_reader
from tests.support.sse_client import SSEClient, StreamClosed

pytestmark = pytest.mark.e2e

SLOW = 50
RSS_BOUND = 64 * 1024 * 1024  # see README "Slow consumers": ~256 KiB pinned per stalled peer + slack


async def read_like_a_browser(port: int, client: SSEClient, count: int) -> list[int]:
    """Read `count` events; if the server cuts the stream (this test process is slow too),
    reconnect with the last id, as EventSource does."""
    values: list[int] = []
    while len(values) < count:
        try:
            event = await client.next_event(timeout=60)
        except StreamClosed:
            await client.close()
            client = await SSEClient.open(port, ["firehose"], last_event_id=client.last_event_id)
            continue
        assert event.type == "message"
        values.append(json.loads(event.data)["n"])
    await client.close()
    return values


async def test_stalled_readers_are_cut_with_bounded_memory_while_healthy_clients_get_everything(
    service_factory, redis_url, http
):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_TCP_USER_TIMEOUT_MS": "2000",
                               "PUSHSVC_HISTORY_SIZE": "5000"})
    assert service.proc is not None
    healthy = [await SSEClient.open(service.port, ["firehose"]) for _ in range(5)]
    await asyncio.gather(*[c.wait_open() for c in healthy])
    slow = [await asyncio.to_thread(stalled_reader, service.port, "firehose") for _ in range(SLOW)]
    before = rss_bytes(service.proc.pid)
    peak = before

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_bytes(service.proc.pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        reading = [asyncio.create_task(read_like_a_browser(service.port, c, 2048)) for c in healthy]
        count = await publish_bulk(service.base, "firehose", 20 * 1024 * 1024, 10 * 1024)
        assert count == 2048
        for values in await asyncio.gather(*reading):
            assert values == list(range(count))  # a healthy client that was cut resumed without loss

        async def all_cut() -> None:
            while await metric(http, service, "pushsvc_slow_consumer_disconnects_total") < SLOW:
                await asyncio.sleep(0.1)

        await asyncio.wait_for(all_cut(), 30)

        async def released() -> None:  # TCP_USER_TIMEOUT aborts the stalled sockets
            while await metric(http, service, "pushsvc_open_streams") > len(healthy):
                await asyncio.sleep(0.1)

        await asyncio.wait_for(released(), 30)
    finally:
        sampler.cancel()
        for sock in slow:
            sock.close()
        await asyncio.gather(*[c.close() for c in healthy])
    print(f"RSS growth under {SLOW} stalled readers: {(peak - before) / 2**20:.1f} MiB")
    assert peak - before < RSS_BOUND, f"RSS grew by {(peak - before) / 2**20:.1f} MiB"
