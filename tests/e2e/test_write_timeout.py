"""A write that never completes ends the stream after PUSHSVC_WRITE_TIMEOUT_SECONDS.

A client stops reading (a tiny receive buffer on HTTP/1.1, a zero flow-control window on
HTTP/2) while its queue is far too large to overflow; TCP_USER_TIMEOUT is off, so the
kernel cannot be what ends it.  pushsvc ends the stream itself (counter
``pushsvc_write_timeouts_total``, access-log reason ``write_timeout``) and releases its
subscriber, queue and session (``pushsvc_open_streams`` back to 0) -- through the fast door
and through the Quart route (taken by every stream once CORS is configured), which share
one pump."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.h2stall import StalledH2Client
from tests.support.helpers import metric
from tests.support.load import publish_bulk, stalled_reader

pytestmark = pytest.mark.e2e

DOORS = {"fast door": {}, "Quart route": {"PUSHSVC_CORS_ORIGINS": "https://app.example"}}


async def _wait_metric(http, service, name: str, predicate, timeout: float = 15) -> float:
    async def loop() -> float:
        while not predicate(value := await metric(http, service, name)):
            await asyncio.sleep(0.1)
        return value

    return await asyncio.wait_for(loop(), timeout)


@pytest.mark.parametrize("protocol", ["HTTP/1.1", "HTTP/2"])
@pytest.mark.parametrize("door", DOORS)
async def test_a_write_pending_past_the_deadline_ends_the_stream_and_frees_it(
    service_factory, redis_url, http, protocol, door
):
    service = service_factory({
        "PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_TCP_USER_TIMEOUT_MS": "0", "PUSHSVC_WRITE_TIMEOUT_SECONDS": "1",
        "PUSHSVC_QUEUE_SIZE": "100000", "PUSHSVC_QUEUE_BYTES": str(256 * 1024 * 1024),  # never overflows here
        "PUSHSVC_LOG_FORMAT": "json", **DOORS[door],
    })
    h2_client = None
    sock = None
    if protocol == "HTTP/2":
        h2_client = await StalledH2Client.connect(service.port)
        stream_id = await h2_client.open("/stream?channel=stuck")
        await h2_client.wait_for(lambda: stream_id in h2_client.status, 10)
    else:
        sock = await asyncio.to_thread(stalled_reader, service.port, "stuck")
    try:
        await _wait_metric(http, service, "pushsvc_open_streams", lambda v: v == 1)
        # Far more than the socket buffers (or the h2 window and buffer) take: a write blocks.
        await publish_bulk(service.base, "stuck", 4 * 1024 * 1024, 10 * 1024)
        await _wait_metric(http, service, "pushsvc_write_timeouts_total", lambda v: v == 1)
        await _wait_metric(http, service, "pushsvc_open_streams", lambda v: v == 0, timeout=5)
        assert await metric(http, service, "pushsvc_slow_consumer_disconnects_total") == 0
        if h2_client is not None:  # the client learns that its stream ended
            await h2_client.wait_for(lambda: stream_id in h2_client.reset, 5)
        ended = [json.loads(line) for line in service.log().splitlines() if '"stream ended"' in line]
        assert [line["reason"] for line in ended] == ["write_timeout"]
        assert "Traceback" not in service.log()
    finally:
        if h2_client is not None:
            await h2_client.close()
        if sock is not None:
            sock.close()
