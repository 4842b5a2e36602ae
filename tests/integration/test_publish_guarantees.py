"""Publishing guarantees on real parts (redis-server, a pushsvc process, a raw SSE client):
nobody can forge a position with a raw PUBLISH, idempotency keys and retries never store
twice, a multi-channel event carries one identity, and an old publisher keeps working."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
import redis.asyncio as aioredis

from pushsvc import wire
from pushsvc.events import parse_message
from tests.support.helpers import TOKEN, metric, publish
from tests.support.legacy import OLD_PUBLISH_LUA
from tests.support.procs import ROOT
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.redis
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_a_raw_publish_cannot_forge_a_position(service_factory, redis_url, http):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    first = await SSEClient.open(service.port, ["news"])
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await first.wait_open()
        real1 = (await publish(http, service, {"channel": "news", "data": "real1"})).json()["id"]
        assert (await first.next_event()).last_event_id == real1
        epoch = real1.split("-")[0]
        # The next real sequence, and one far ahead: trusted, they would drop the real event 2
        # (a "duplicate") and black out every stream opened afterwards.
        await raw.publish("news", json.dumps({"data": "forged", "pushsvc": [2, epoch]}))
        await raw.publish("news", json.dumps({"data": "far", "pushsvc": [999999, epoch, "abc"]}))
        forged = await first.events(2)
        assert [e.data for e in forged] == ["forged", "far"]
        assert all(e.last_event_id == real1 for e in forged)  # no id line: the id did not move
        assert b"id: %s-2\n" % epoch.encode() not in first.raw

        second = await SSEClient.open(service.port, ["news"])
        try:
            await second.wait_open()
            real2 = (await publish(http, service, {"channel": "news", "data": "real2"})).json()["id"]
            assert real2 == f"{epoch}-2"
            for stream in (first, second):
                event = await stream.next_event()
                assert (event.data, event.last_event_id) == ("real2", real2)
        finally:
            await second.close()
        assert await metric(http, service, "pushsvc_invalid_messages_total") == 0
    finally:
        await raw.aclose()
        await first.close()


async def test_a_repeated_idempotency_key_is_delivered_once(service_factory, redis_url, http):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    client = await SSEClient.open(service.port, ["orders"])
    try:
        await client.wait_open()
        body = [{"channel": "orders", "data": i} for i in range(3)]
        headers = {**AUTH, "Idempotency-Key": "checkout-42"}
        first = await http.post(service.base + "/publish", json=body, headers=headers)
        again = await http.post(service.base + "/publish", json=body, headers=headers)
        assert first.status_code == again.status_code == 202
        assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
        other = await http.post(service.base + "/publish", json=body[:1], headers=headers)
        assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
        await publish(http, service, {"channel": "orders", "data": "end"})
        assert [e.data for e in await client.events(4)] == ["0", "1", "2", "end"]
    finally:
        await client.close()


async def kill_normal_clients(admin: aioredis.Redis, stop: asyncio.Event, channel: str = "bulk") -> int:
    """Until `stop`: each time 300 more events of `channel` are stored, kill every non-pub/sub
    client connection but our own -- so the kill lands in the middle of a batch's pipeline."""
    killed, last = 0, 0
    while not stop.is_set():
        seq = int(await admin.hget(wire.meta_key(channel), "seq") or 0)
        if seq >= last + 300:
            killed += int(await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
            last = seq
    return killed


async def test_killing_the_redis_connection_during_a_batch_never_duplicates(
    service_factory, private_redis, http
):
    service = service_factory({"PUSHSVC_REDIS_URL": private_redis.url})
    client = await SSEClient.open(service.port, ["bulk"])
    admin = aioredis.Redis.from_url(private_redis.url)
    try:
        await client.wait_open()
        body = [{"channel": "bulk", "data": i} for i in range(1000)]
        headers = {**AUTH, "Idempotency-Key": "bulk-1"}
        stop = asyncio.Event()
        killer = asyncio.create_task(kill_normal_clients(admin, stop))
        answers = []
        try:
            for _ in range(3):  # under fire: 202, or 503 outcome_unknown (retry: safe)
                answers.append(await http.post(service.base + "/publish", json=body, headers=headers))
        finally:
            stop.set()
            killed = await killer
        assert killed > 0
        assert all(a.status_code in (202, 503) for a in answers), [a.text for a in answers]
        final = await http.post(service.base + "/publish", json=body, headers=headers)
        assert final.status_code == 202
        received = [int(e.data) for e in await client.events(1000, timeout=30)]
        assert received == list(range(1000))
        ids = [e["id"] for e in final.json()["events"]]
        assert len(set(ids)) == 1000 and ids[-1].endswith("-1000")
        with pytest.raises(asyncio.TimeoutError):
            extra = await client.next_event(timeout=0.5)
            pytest.fail(f"a duplicate arrived: {extra.data}")
    finally:
        await admin.aclose()
        await client.close()


async def test_a_multi_channel_event_carries_one_identity_on_every_copy(service_factory, redis_url, http):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    response = await publish(http, service, [{"channel": ["a", "b"], "data": 1}, {"channel": "a", "data": 2}])
    assert response.status_code == 202
    raw = aioredis.Redis.from_url(redis_url)
    try:
        copies = {ch: [fields[b"m"] for _, fields in await raw.xrange(wire.history_key(ch))] for ch in "ab"}
    finally:
        await raw.aclose()
    frame_a, frame_b = parse_message("a", copies["a"][0]), parse_message("b", copies["b"][0])
    assert frame_a.eid is not None and frame_a.eid == frame_b.eid
    assert parse_message("a", copies["a"][1]).eid is None  # one channel: no identity needed




async def test_an_old_publishers_events_arrive_live_and_keep_their_ids_in_history(
    service_factory, redis_url, http
):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    live = await SSEClient.open(service.port, ["legacy"])
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await live.wait_open()
        real1 = (await publish(http, service, {"channel": "legacy", "data": "new1"})).json()["id"]
        assert (await live.next_event()).data == "new1"
        keys = [wire.meta_key("legacy"), wire.history_key("legacy")]
        seq, epoch = await raw.eval(OLD_PUBLISH_LUA, 2, *keys, "legacy", '{"data":"old"', 1000, 3600, "aaaaaaaa")
        assert (int(seq), epoch.decode()) == (2, real1.split("-")[0])
        event = await live.next_event()
        assert event.data == "old"  # live, as a foreign event (no id) during the upgrade window
        resumed = await SSEClient.open(service.port, ["legacy"], last_event_id=real1)
        try:
            await resumed.wait_open()
            # The next event pushsvc publishes reveals the gap: the old event is replayed from
            # history with its id, then the new one follows.
            real3 = (await publish(http, service, {"channel": "legacy", "data": "new3"})).json()["id"]
            replayed = await resumed.events(2)
            assert [(e.data, e.last_event_id) for e in replayed] == [
                ("old", f"{epoch.decode()}-2"), ("new3", real3)]
            # The live stream saw "old" without an id; the gap brings it again, with its id
            # (README, Upgrading: the window's one duplicate).
            again = await live.events(2)
            assert [(e.data, e.last_event_id) for e in again] == [
                ("old", f"{epoch.decode()}-2"), ("new3", real3)]
        finally:
            await resumed.close()
    finally:
        await raw.aclose()
        await live.close()


async def test_without_a_key_the_internal_token_makes_redis_retries_harmless(
    service_factory, private_redis, http
):
    """redis-py re-sends a whole pipeline after a connection error; every call carries an
    internal token, so the events it had already stored are not stored again."""
    service = service_factory({"PUSHSVC_REDIS_URL": private_redis.url})
    client = await SSEClient.open(service.port, ["bulk"])
    admin = aioredis.Redis.from_url(private_redis.url)
    try:
        await client.wait_open()
        stop = asyncio.Event()
        killer = asyncio.create_task(kill_normal_clients(admin, stop))
        accepted: list[int] = []
        try:
            for attempt in range(5):
                body = [{"channel": "bulk", "data": attempt * 1000 + i} for i in range(1000)]
                answer = await http.post(service.base + "/publish", json=body, headers=AUTH)
                assert answer.status_code in (202, 503), answer.text
                if answer.status_code == 202:
                    accepted += [item["data"] for item in body]
        finally:
            stop.set()
            assert await killer > 0
        end = await publish(http, service, {"channel": "bulk", "data": "end"})
        assert end.status_code == 202
        received: list[int] = []
        while (event := await client.next_event(timeout=10)).data != "end":
            received.append(int(event.data))
        duplicates = sorted({v for v in received if received.count(v) > 1})
        assert not duplicates, f"{len(duplicates)} events delivered twice, e.g. {duplicates[:5]}"
        assert set(accepted) <= set(received)
    finally:
        await admin.aclose()
        await client.close()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pushsvc.cli", "publish", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


async def test_pushsvc_publish_takes_an_idempotency_key(service_factory, redis_url):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    direct = [run_cli("cli", "1", "--redis-url", redis_url, "--idempotency-key", "k1") for _ in range(2)]
    assert direct[0].returncode == direct[1].returncode == 0, direct[0].stderr
    assert direct[0].stdout == direct[1].stdout and '"ids"' in direct[0].stdout
    reused = run_cli("cli", "2", "--redis-url", redis_url, "--idempotency-key", "k1")
    assert reused.returncode == 2 and "different request" in reused.stderr
    http_args = ("--http", service.base, "--token", TOKEN, "--idempotency-key", "k2")
    over_http = [run_cli("cli", "3", *http_args) for _ in range(2)]
    assert over_http[0].returncode == over_http[1].returncode == 0, over_http[0].stderr
    assert json.loads(over_http[0].stdout) == json.loads(over_http[1].stdout)
