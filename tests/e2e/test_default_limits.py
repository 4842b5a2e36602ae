"""With the default settings, a 64 KiB string published with POST /publish is accepted and
reaches a stream intact (the per-event limit counts the stored JSON, so the default leaves
room for the envelope)."""

from __future__ import annotations

import pytest

from tests.support.helpers import publish
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.e2e


async def test_a_64_kib_string_round_trips_with_the_defaults(service_factory, http):
    service = service_factory()
    value = "é" * 1024 + "x" * (64 * 1024 - 2048)  # 64 KiB of UTF-8, some of it two-byte
    assert len(value.encode()) == 64 * 1024
    client = await SSEClient.open(service.port, ["big"])
    try:
        await client.wait_open()
        response = await publish(http, service, {"channel": "big", "type": "blob", "data": value})
        assert response.status_code == 202, response.text
        event = await client.next_event(timeout=10)
        assert event.type == "blob"
        assert event.data == value  # a string is sent as it is
    finally:
        await client.close()
