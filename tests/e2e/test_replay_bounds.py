"""A resume replay goes through the same bounds as live delivery: streams that resume from
an old id on a channel of large events, and never read, keep the process's memory flat;
a stream that reads gets the whole replay."""

from __future__ import annotations

import json

import pytest

from tests.support.replay_load import fill_history, stalled_replays
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.e2e

EVENTS = 1000
EVENT_BYTES = 64 * 1024
STALLED = 10
# Per stalled stream: one chunk of at most 256 KiB (+ one event) pending in the transport,
# plus a history page read for it; whole-history replays took ~1.1 GiB here.
RSS_GROWTH_BOUND = 64 * 1024 * 1024


async def test_stalled_streams_resuming_from_an_old_id_keep_memory_bounded_and_readers_get_everything(
    service_factory, redis_url
):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_HISTORY_SIZE": str(EVENTS)})
    first_id = await fill_history(service, "big", EVENTS, EVENT_BYTES)
    before, peak, socks = await stalled_replays(service, "big", first_id, STALLED, seconds=4.0)
    try:
        print(f"RSS before {before / 2**20:.0f} MiB, peak with {STALLED} stalled replays {peak / 2**20:.0f} MiB")
        assert peak - before < RSS_GROWTH_BOUND
        reader = await SSEClient.open(service.port, ["big"], last_event_id=first_id)
        try:
            got = [json.loads(e.data)["n"] for e in await reader.events(EVENTS - 1, timeout=60)]
        finally:
            await reader.close()
        assert got == list(range(1, EVENTS))
    finally:
        for sock in socks:
            sock.close()
