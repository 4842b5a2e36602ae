"""One Redis pub/sub connection per process, whatever the number of streams; channels are
released when their last subscriber leaves."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.helpers import metric, publish
from tests.support.procs import wait_until
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.redis


def pubsub_clients(redis_server) -> list[str]:
    with redis_server.client() as client:
        return [c for c in client.client_list(_type="pubsub")]


async def test_200_streams_on_20_channels_share_one_pubsub_connection(
    service_factory, redis_server, redis_url, http
):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    channels = [f"room-{i}" for i in range(20)]
    clients = await asyncio.gather(
        *[SSEClient.open(service.port, [channels[i % 20]]) for i in range(200)]
    )
    try:
        await asyncio.gather(*[c.wait_open(10) for c in clients])
        connections = pubsub_clients(redis_server)
        assert len(connections) == 1, connections
        assert int(connections[0]["sub"]) == 2 * 20 + 1  # public + internal live names, + pushsvc:control
        await publish(http, service, {"channel": channels[3], "data": "hello"})
        receivers = [c for i, c in enumerate(clients) if i % 20 == 3]
        assert [(await c.next_event()).data for c in receivers] == ["hello"] * 10
    finally:
        await asyncio.gather(*[c.close() for c in clients])


async def test_disconnected_clients_release_subscriptions_and_redis_channels(
    service_factory, redis_server, redis_url, http
):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    clients = await asyncio.gather(
        *[SSEClient.open(service.port, [f"gone-{i % 5}", "shared"]) for i in range(50)]
    )
    await asyncio.gather(*[c.wait_open(10) for c in clients])
    assert await metric(http, service, "pushsvc_open_streams") == 50
    with redis_server.client() as client:
        assert len(client.pubsub_channels()) == 2 * 6 + 1  # public + internal live names, + control
    await asyncio.gather(*[c.close() for c in clients])

    async def released() -> None:
        while await metric(http, service, "pushsvc_open_streams") != 0:
            await asyncio.sleep(0.05)

    await asyncio.wait_for(released(), 5)
    with redis_server.client() as client:
        wait_until(lambda: client.pubsub_channels() == [b"pushsvc:control"], 6, what="channels unsubscribed")
