"""Redis faults: unreachable at start-up, restarted, paused, pub/sub connection killed.

Each case ends with the service up and nothing that was accepted lost."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from pushsvc.publisher import AsyncPublisher
from tests.support.helpers import metric, publish
from tests.support.procs import RedisServer
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.redis


async def wait_ready(http, service, ready: bool = True, timeout: float = 15) -> dict:
    async def poll() -> dict:
        while True:
            response = await http.get(service.base + "/readyz")
            if (response.status_code == 200) == ready:
                return response.json()
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout)


async def test_service_starts_without_redis_and_works_once_redis_appears(service_factory, http):
    redis_server = RedisServer()  # not started yet
    service = service_factory({"PUSHSVC_REDIS_URL": redis_server.url, "PUSHSVC_KEEPALIVE_SECONDS": "0.5"})
    try:
        assert (await http.get(service.base + "/healthz")).status_code == 200
        body = await wait_ready(http, service, ready=False)
        assert body["error"] == "not_ready" and "redis unavailable" in body["detail"]
        assert (await publish(http, service, {"channel": "late", "data": 1})).status_code == 503
        client = await SSEClient.open(service.port, ["late"])
        assert client.status == 200
        await client.until(lambda c: "ping" in c.parser.comments, timeout=5)  # open, heartbeating
        redis_server.start()
        await wait_ready(http, service)
        await client.wait_open(10)
        response = await publish(http, service, {"channel": "late", "data": "first"})
        assert response.status_code == 202
        assert (await client.next_event(10)).data == "first"
        await client.close()
    finally:
        redis_server.stop()


async def test_restart_with_persistence_keeps_streams_open_and_loses_nothing(service_factory, http):
    redis_server = RedisServer(persist=True)
    redis_server.start()
    service = service_factory({"PUSHSVC_REDIS_URL": redis_server.url, "PUSHSVC_KEEPALIVE_SECONDS": "0.3"})
    client = await SSEClient.open(service.port, ["orders"])
    try:
        await client.wait_open()
        for i in range(3):
            await publish(http, service, {"channel": "orders", "data": i})
        assert [int(e.data) for e in await client.events(3)] == [0, 1, 2]

        redis_server.kill()
        pings = client.parser.comments.count("ping")
        await client.until(lambda c: c.parser.comments.count("ping") > pings, timeout=5)
        assert (await publish(http, service, {"channel": "orders", "data": "refused"})).status_code == 503

        redis_server.start()
        # Published straight into Redis, maybe before pushsvc has re-subscribed: replayed
        # from history if it missed them live.
        publisher = AsyncPublisher(redis_server.url)
        for i in range(3, 8):
            await publisher.publish("orders", i)
        await publisher.aclose()
        await wait_ready(http, service)
        await publish(http, service, {"channel": "orders", "data": 8})
        received = [await client.next_event(10) for _ in range(6)]
        assert [int(e.data) for e in received] == [3, 4, 5, 6, 7, 8]
        assert all(e.type == "message" for e in received)
        with pytest.raises(asyncio.TimeoutError):
            await client.next_event(timeout=0.3)
    finally:
        await client.close()
        redis_server.stop()


async def test_restart_without_persistence_resets_streams_then_delivers_live(service_factory, http):
    redis_server = RedisServer()
    redis_server.start()
    service = service_factory({"PUSHSVC_REDIS_URL": redis_server.url})
    client = await SSEClient.open(service.port, ["news"])
    try:
        await client.wait_open()
        await publish(http, service, {"channel": "news", "data": "before"})
        assert (await client.next_event()).data == "before"
        redis_server.restart()  # history is gone: a new epoch
        await wait_ready(http, service)
        response = await publish(http, service, {"channel": "news", "data": "after"})
        assert response.status_code == 202
        reset = await client.next_event(10)
        assert reset.type == "pushsvc.reset"
        assert json.loads(reset.data) == {"reason": "history_lost", "channels": ["news"],
                                          "position": reset.last_event_id}
        live = await client.next_event(10)
        assert live.data == "after" and live.last_event_id == response.json()["id"]
    finally:
        await client.close()
        redis_server.stop()


async def test_killed_pubsub_connection_is_recovered_and_the_gap_replayed(
    service_factory, private_redis, http
):
    service = service_factory({"PUSHSVC_REDIS_URL": private_redis.url})
    client = await SSEClient.open(service.port, ["gap"])
    try:
        await client.wait_open()
        publisher = AsyncPublisher(private_redis.url)
        await publisher.publish("gap", 0)
        assert (await client.next_event()).data == "0"
        started = time.monotonic()
        # Kill the service's pub/sub connection and publish in the gap, before it is back.
        async with publisher.client.pipeline(transaction=True) as pipe:
            pipe.client_kill_filter(_type="pubsub")
            await pipe.execute()
        for i in range(1, 6):
            await publisher.publish("gap", i)
        await publisher.aclose()
        assert [int(e.data) for e in await client.events(5, timeout=10)] == [1, 2, 3, 4, 5]
        assert time.monotonic() - started < 10
        assert await metric(http, service, "pushsvc_redis_reconnects_total") >= 1
        assert "redis pub/sub connection lost" in service.log()
    finally:
        await client.close()


async def test_paused_redis_gets_503_within_the_timeout_and_streams_survive(
    service_factory, private_redis, http
):
    service = service_factory({"PUSHSVC_REDIS_URL": private_redis.url, "PUSHSVC_REDIS_TIMEOUT_SECONDS": "0.5"})
    client = await SSEClient.open(service.port, ["p"])
    try:
        await client.wait_open()
        with private_redis.client() as admin:
            admin.execute_command("CLIENT", "PAUSE", "4000", "ALL")
        started = time.monotonic()
        response = await publish(http, service, {"channel": "p", "data": "paused"})
        elapsed = time.monotonic() - started
        assert response.status_code == 503, response.text
        # The script was sent, its answer never came: the outcome is unknown, and says so.
        assert response.json()["error"] == "outcome_unknown"
        assert "same Idempotency-Key is safe" in response.json()["detail"]
        assert elapsed < 2.0  # the bound is PUSHSVC_REDIS_TIMEOUT_SECONDS, not the pause
        await wait_ready(http, service, ready=False, timeout=5)
        with private_redis.client() as admin:
            admin.execute_command("CLIENT", "UNPAUSE")
        await wait_ready(http, service)
        response = await publish(http, service, {"channel": "p", "data": "resumed"})
        assert response.status_code == 202
        assert (await client.next_event(10)).data == "resumed"  # the same stream, still open
    finally:
        await client.close()
