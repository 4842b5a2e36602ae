"""Clients that stop reading are cut by pushsvc's own queue bound (the kernel's
TCP_USER_TIMEOUT and the write deadline are off), memory stays bounded, healthy clients get
everything."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.helpers import metric
from tests.support.load import PeakRSS, publish_bulk, read_like_a_browser, stalled_reader
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.e2e

SLOW = 50
RSS_BOUND = 96 * 1024 * 1024  # README "Slow consumers": per stalled peer <= one 256 KiB chunk, until cut its
# queue (PUSHSVC_QUEUE_BYTES, events shared), + history reads of healthy clients that were cut


async def test_stalled_readers_are_cut_with_bounded_memory_while_healthy_clients_get_everything(
    service_factory, redis_url, http
):
    # The kernel (TCP_USER_TIMEOUT) and the write deadline are off: only pushsvc's queue bound
    # may end the stalled streams, so this proves that bound and nothing else.
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_TCP_USER_TIMEOUT_MS": "0",
                               "PUSHSVC_WRITE_TIMEOUT_SECONDS": "0", "PUSHSVC_HISTORY_SIZE": "3000"})
    assert service.proc is not None
    healthy = [await SSEClient.open(service.port, ["firehose"]) for _ in range(2)]
    await asyncio.gather(*[c.wait_open() for c in healthy])
    slow = [await asyncio.to_thread(stalled_reader, service.port, "firehose") for _ in range(SLOW)]
    try:
        async with PeakRSS(service.proc.pid) as rss:
            reading = [asyncio.create_task(read_like_a_browser(service.port, "firehose", c, 2048)) for c in healthy]
            count = await publish_bulk(service.base, "firehose", 20 * 1024 * 1024, 10 * 1024)
            assert count == 2048
            for values in await asyncio.gather(*reading):
                assert values == list(range(count))  # a healthy client that was cut resumed without loss

            async def all_cut() -> None:
                while await metric(http, service, "pushsvc_slow_consumer_disconnects_total") < SLOW:
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(all_cut(), 30)

            async def released() -> None:  # pushsvc ended every stalled stream, stuck write or not
                while await metric(http, service, "pushsvc_open_streams") > len(healthy):
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(released(), 10)
            assert await metric(http, service, "pushsvc_write_timeouts_total") == 0
    finally:
        for sock in slow:
            sock.close()
        await asyncio.gather(*[c.close() for c in healthy])
    print(f"RSS growth under {SLOW} stalled readers: {rss.growth / 2**20:.1f} MiB")
    assert rss.growth < RSS_BOUND, f"RSS grew by {rss.growth / 2**20:.1f} MiB"
