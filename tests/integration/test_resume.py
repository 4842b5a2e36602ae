"""Resume without loss: per-channel history and exact replay on reconnect."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx
import pytest

from pushsvc.events import parse_message
from pushsvc.publisher import AsyncPublisher
from tests.support.helpers import metric, publish
from tests.support.procs import RedisServer
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.redis


@pytest.fixture(params=["redis", "memory"])
def broker_env(request, redis_url) -> dict[str, str]:
    return {"PUSHSVC_REDIS_URL": redis_url} if request.param == "redis" else {}


async def publish_many(http: httpx.AsyncClient, service, channel: str | list[str], values) -> list:
    body = [{"channel": channel, "data": v} for v in values]
    ids = []
    for start in range(0, len(body), 250):
        response = await publish(http, service, body[start:start + 250])
        assert response.status_code == 202, response.text
        ids += response.json()["events"]
    return ids


async def test_reconnect_with_last_id_replays_exactly_the_missed_events_then_live(
    service_factory, broker_env, http
):
    service = service_factory(broker_env)
    client = await SSEClient.open(service.port, ["news"])
    await client.wait_open()
    await publish_many(http, service, "news", range(10))
    seen = await client.events(10)
    assert [int(e.data) for e in seen] == list(range(10))
    await client.close()

    await publish_many(http, service, "news", range(10, 510))
    again = await SSEClient.open(service.port, ["news"], last_event_id=seen[-1].last_event_id)
    try:
        replayed = await again.events(500, timeout=20)
        assert [int(e.data) for e in replayed] == list(range(10, 510))
        await publish(http, service, {"channel": "news", "data": "live"})
        assert (await again.next_event()).data == "live"
    finally:
        await again.close()
    assert await metric(http, service, "pushsvc_events_replayed_total") == 500


async def test_multi_channel_stream_resumes_every_channel_whatever_the_parameter_order(
    service_factory, broker_env, http
):
    service = service_factory(broker_env)
    channels = ["c", "a", "b"]
    client = await SSEClient.open(service.port, channels)
    await client.wait_open()
    for i in range(6):
        await publish(http, service, {"channel": channels[i % 3], "data": {"ch": channels[i % 3], "n": i}})
    seen = await client.events(6)
    await client.close()
    published = []
    for i in range(6, 60):
        ch = random.choice(channels)
        published.append((ch, i))
        await publish(http, service, {"channel": ch, "data": {"ch": ch, "n": i}})
    again = await SSEClient.open(service.port, ["b", "c", "a"], last_event_id=seen[-1].last_event_id)
    try:
        replayed = [json.loads(e.data) for e in await again.events(len(published))]
        # Order is guaranteed per channel (there is no order across channels to keep).
        for ch in channels:
            assert [d["n"] for d in replayed if d["ch"] == ch] == [n for c, n in published if c == ch]
        assert len(replayed) == len(published)
        await publish(http, service, {"channel": "a", "data": "live"})
        assert (await again.next_event()).data == "live"
    finally:
        await again.close()


async def test_stream_that_received_nothing_still_resumes_from_its_opening_id(
    service_factory, broker_env, http
):
    service = service_factory(broker_env)
    await publish_many(http, service, "quiet", ["old"])
    client = await SSEClient.open(service.port, ["quiet"])
    await client.wait_open()
    opening_id = client.last_event_id
    assert opening_id.endswith("-1")
    await client.close()
    await publish_many(http, service, "quiet", ["missed"])
    again = await SSEClient.open(service.port, ["quiet"], last_event_id=opening_id)
    try:
        assert (await again.next_event()).data == "missed"
    finally:
        await again.close()


async def test_publishes_racing_reconnects_lose_nothing_and_duplicate_nothing(
    service_factory, broker_env, http
):
    service = service_factory(broker_env)
    channels = ["r1", "r2", "r3"]
    total = 300
    rng = random.Random(7)

    async def publisher() -> None:
        for n in range(total):
            ch = channels[n % 3]
            await publish(http, service, {"channel": ch, "data": {"ch": ch, "n": n}})
            if rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.01)

    async def reconnecting_client(subset: list[str]) -> dict[str, list[int]]:
        received: dict[str, list[int]] = {ch: [] for ch in subset}
        expected = {ch: [n for n in range(total) if channels[n % 3] == ch] for ch in subset}
        first = await SSEClient.open(service.port, subset)
        await first.wait_open()  # synced: its opening id is a position before any publish
        last_id = first.last_event_id
        await first.close()
        opened.append(subset)
        if len(opened) == len(subsets):
            all_opened.set()
        while received != expected:
            client = await SSEClient.open(service.port, subset, last_event_id=last_id)
            try:
                deadline = asyncio.get_running_loop().time() + rng.random() * 0.2
                while received != expected:
                    left = deadline - asyncio.get_running_loop().time()
                    if left <= 0:
                        break
                    try:
                        event = await client.next_event(timeout=left)
                    except TimeoutError:
                        break
                    data = json.loads(event.data)
                    received[data["ch"]].append(data["n"])
                    last_id = event.last_event_id
            finally:
                await client.close()
        return received

    subsets = [["r1"], ["r2", "r3"], ["r1", "r2", "r3"], ["r3", "r1"]] * 2
    opened: list[list[str]] = []
    all_opened = asyncio.Event()
    results = asyncio.gather(*[reconnecting_client(s) for s in subsets])
    await asyncio.wait_for(all_opened.wait(), 10)  # every client holds a position before the first publish
    await publisher()
    for subset, received in zip(subsets, await asyncio.wait_for(results, 60), strict=True):
        for ch in subset:
            assert received[ch] == [n for n in range(total) if channels[n % 3] == ch], (subset, ch)


async def test_id_older_than_history_gets_a_reset_event_then_live(service_factory, redis_url, http):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_HISTORY_SIZE": "20"})
    ids = await publish_many(http, service, "capped", range(5))
    await publish_many(http, service, "capped", range(5, 60))
    client = await SSEClient.open(service.port, ["capped"], last_event_id=ids[1]["id"])
    try:
        reset = await client.next_event()
        assert reset.type == "pushsvc.reset"
        assert json.loads(reset.data) == {"reason": "too_old", "channels": ["capped"],
                                          "position": reset.last_event_id}
        assert reset.last_event_id.endswith("-60")
        await publish(http, service, {"channel": "capped", "data": "live"})
        live = await client.next_event()
        assert (live.type, live.data) == ("message", "live")
        assert live.last_event_id.endswith("-61")
    finally:
        await client.close()


@pytest.mark.parametrize("garbled", ["garbage", "abc-12.x", "ZZ-1", "a" * 10000, "-1", "1.2.3", "é-1"])
async def test_garbled_id_gets_a_reset_event_then_live_and_no_error(service_factory, redis_url, http, garbled):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    await publish_many(http, service, "g", ["before"])
    client = await SSEClient.open(service.port, ["g"], last_event_id=garbled)
    try:
        assert client.status == 200
        reset = await client.next_event()
        assert reset.type == "pushsvc.reset"
        assert json.loads(reset.data)["reason"] == "unreadable_id"
        await publish(http, service, {"channel": "g", "data": "after"})
        assert (await client.next_event()).data == "after"
    finally:
        await client.close()


async def test_lost_history_gets_a_reset_naming_only_that_channel(service_factory, redis_server, redis_url, http):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    ids = await publish_many(http, service, ["keep", "lose"], ["x"])
    with redis_server.client() as r:
        r.delete("pushsvc:{lose}:meta", "pushsvc:{lose}:history")
    await publish_many(http, service, "lose", ["new epoch"])
    await publish_many(http, service, "keep", ["kept"])
    stream_id = ".".join(i["id"] for i in ids)  # channels sorted: keep, lose
    client = await SSEClient.open(service.port, ["lose", "keep"], last_event_id=stream_id)
    try:
        first, second = await client.events(2)
        got = {(first.type, first.data), (second.type, second.data)}
        assert ("message", "kept") in got
        reset = first if first.type == "pushsvc.reset" else second
        data = json.loads(reset.data)
        assert (data["reason"], data["channels"]) == ("history_lost", ["lose"])
        assert data["position"] == reset.last_event_id
    finally:
        await client.close()


async def test_history_cap_is_exact_and_ttl_is_set(service_factory, redis_server, redis_url, http):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_HISTORY_SIZE": "20",
                               "PUSHSVC_HISTORY_TTL_SECONDS": "120"})
    await publish_many(http, service, "cap", range(50))
    with redis_server.client() as r:
        assert r.xlen("pushsvc:{cap}:history") == 20
        assert 100 < r.ttl("pushsvc:{cap}:history") <= 120
        assert 100 < r.ttl("pushsvc:{cap}:meta") <= 120
        assert r.hget("pushsvc:{cap}:meta", "seq") == b"50"
        first = r.xrange("pushsvc:{cap}:history", count=1)[0][0]
        assert first == b"0-31"


async def test_history_off_still_resumes_when_nothing_was_missed(service_factory, redis_url, http):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url, "PUSHSVC_HISTORY_SIZE": "0"})
    ids = await publish_many(http, service, "nohist", ["a"])
    client = await SSEClient.open(service.port, ["nohist"], last_event_id=ids[0]["id"])
    try:
        await client.wait_open()  # subscribed: its position is confirmed
        assert client.last_event_id == ids[0]["id"]
        await publish(http, service, {"channel": "nohist", "data": "b"})
        assert (await client.next_event()).data == "b"  # no reset: nothing was missed
    finally:
        await client.close()
    await publish_many(http, service, "nohist", ["missed"])
    again = await SSEClient.open(service.port, ["nohist"], last_event_id=ids[0]["id"])
    try:
        assert (await again.next_event()).type == "pushsvc.reset"
    finally:
        await again.close()


async def test_reconnect_to_another_process_resumes_exactly(service_factory, redis_url, http):
    a = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    b = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    client = await SSEClient.open(a.port, ["x", "y"])
    await client.wait_open()
    await publish_many(http, a, "x", range(3))
    seen = await client.events(3)
    await client.close()
    await publish_many(http, b, "y", range(3, 8))
    publisher = AsyncPublisher(redis_url)
    await publisher.publish("x", 8)
    await publisher.aclose()
    again = await SSEClient.open(b.port, ["x", "y"], last_event_id=seen[-1].last_event_id)
    try:
        values = [int(e.data) for e in await again.events(6)]
        assert [v for v in values if v != 8] == [3, 4, 5, 6, 7]  # y, in order
        assert values.count(8) == 1  # x, from the publisher
    finally:
        await again.close()


async def test_raw_redis_publish_is_live_only(service_factory, redis_server, redis_url, http):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    client = await SSEClient.open(service.port, ["raw"])
    await client.wait_open()
    opening = client.last_event_id
    await client.close()
    with redis_server.client() as r:
        r.publish("raw", json.dumps({"data": "not kept"}))
    await publish_many(http, service, "raw", ["kept"])
    again = await SSEClient.open(service.port, ["raw"], last_event_id=opening)
    try:
        assert (await again.next_event()).data == "kept"
    finally:
        await again.close()


@pytest.mark.parametrize("history_size", ["1000", "0"])
async def test_new_stream_opened_mid_burst_gets_every_event_after_its_opening_position(
    service_factory, broker_env, http, history_size
):
    service = service_factory({**broker_env, "PUSHSVC_HISTORY_SIZE": history_size})
    await publish_many(http, service, "burst", ["warm-up"])
    total = 1
    for _ in range(5):
        burst = asyncio.create_task(publish_many(http, service, "burst", range(40)))
        client = await SSEClient.open(service.port, ["burst"])
        try:
            await burst
            total += 40
            await client.until(lambda c, end=f"-{total}": c.last_event_id.endswith(end), timeout=10)
            # Every id line in stream order: the opening position, then one per event. Whatever
            # the moment the stream opened, what follows its first id is gap-free.
            ids = [int(line.rsplit(b"-", 1)[1]) for line in bytes(client.raw).split(b"\n")
                   if line.startswith(b"id: ")]
            assert ids == list(range(ids[0], total + 1))
            assert not [e for e in client._events if e.type == "pushsvc.reset"]  # live delivery is exact
        finally:
            await client.close()


async def test_id_beyond_the_channel_sequence_gets_unreadable_id_then_every_live_event(
    service_factory, broker_env, http
):
    service = service_factory(broker_env)
    ids = await publish_many(http, service, "ahead", ["a", "b"])
    epoch = ids[0]["id"].split("-")[0]
    client = await SSEClient.open(service.port, ["ahead"], last_event_id=f"{epoch}-999999999999999999")
    try:
        reset = await client.next_event()
        assert reset.type == "pushsvc.reset"
        assert json.loads(reset.data) == {"reason": "unreadable_id", "channels": ["ahead"],
                                          "position": ids[1]["id"]}
        await publish_many(http, service, "ahead", ["c", "d"])
        assert [e.data for e in await client.events(2)] == ["c", "d"]
    finally:
        await client.close()


async def test_redis_killed_without_persistence_gives_one_history_lost_reset_then_every_later_event(
    service_factory, http
):
    redis_server = RedisServer()  # no persistence: kill -9 loses every key
    redis_server.start()
    service = service_factory({"PUSHSVC_REDIS_URL": redis_server.url, "PUSHSVC_REDIS_TIMEOUT_SECONDS": "0.5"})
    client = await SSEClient.open(service.port, ["crash"])
    accepted: list[tuple[int, str]] = []  # (n, id) answered 202
    restarted = asyncio.Event()
    after_restart = asyncio.Event()

    async def keep_publishing() -> None:
        n = 0
        while True:
            try:
                response = await publish(http, service, {"channel": "crash", "data": n})
            except httpx.HTTPError:
                response = None
            if response is not None and response.status_code == 202:
                accepted.append((n, response.json()["id"]))
                if restarted.is_set() and sum(1 for _, i in accepted if i.split("-")[0] != epoch) >= 50:
                    after_restart.set()
            n += 1
            await asyncio.sleep(0.005)

    try:
        await client.wait_open()
        publisher = asyncio.create_task(keep_publishing())
        try:
            await asyncio.wait_for(_until(lambda: len(accepted) >= 30), 10)
            epoch = accepted[0][1].split("-")[0]
            redis_server.kill()  # SIGKILL while the publisher runs
            redis_server.start()
            restarted.set()
            await asyncio.wait_for(after_restart.wait(), 30)
        finally:
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
        last = accepted[-1]
        await client.until(lambda c: any(e.data == str(last[0]) for e in c._events), timeout=15)
        events = client._events
        resets = [k for k, e in enumerate(events) if e.type == "pushsvc.reset"]
        assert len(resets) == 1, [e.data for e in events if e.type == "pushsvc.reset"]
        reset = events[resets[0]]
        data = json.loads(reset.data)
        assert (data["reason"], data["channels"], data["position"]) == ("history_lost", ["crash"], reset.last_event_id)
        before, after = events[:resets[0]], events[resets[0] + 1:]
        seqs = [int(e.last_event_id.split("-")[1]) for e in before]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap, no duplicate before the crash
        new_epoch = accepted[-1][1].split("-")[0]
        assert new_epoch != epoch
        p = 0 if data["position"] == "0" else int(data["position"].split("-")[1])
        if data["position"] != "0":
            assert data["position"].split("-")[0] == new_epoch
        got = [(e.last_event_id, int(e.data)) for e in after]
        assert all(i.split("-")[0] == new_epoch for i, _ in got)
        assert [int(i.split("-")[1]) for i, _ in got] == list(range(p + 1, p + 1 + len(got)))  # gap-free from it
        owed = [(i, n) for n, i in accepted if i.split("-")[0] == new_epoch and int(i.split("-")[1]) > p]
        assert set(owed) <= set(got) and owed  # every event accepted after the reset's position
    finally:
        await client.close()
        redis_server.stop()


async def _until(predicate: Any, interval: float = 0.01) -> None:
    while not predicate():
        await asyncio.sleep(interval)


async def test_an_event_on_several_channels_reaches_a_stream_of_several_of_them_once_live_and_in_replay(
    service_factory, redis_server, redis_url, http
):
    service = service_factory({"PUSHSVC_REDIS_URL": redis_url})
    client = await SSEClient.open(service.port, ["m1", "m2"])
    await client.wait_open()
    try:
        await publish(http, service, {"channel": ["m1", "m2"], "data": "both"})
        with redis_server.client() as r:
            stored = r.xrange("pushsvc:{m1}:history")[-1][1][b"m"]
        if parse_message("m1", stored).eid is None:
            pytest.xfail("the publish script does not write the event identity yet (helper H3's part of issue 12)")
        await publish(http, service, {"channel": "m2", "data": "m2 only"})
        assert [e.data for e in await client.events(2)] == ["both", "m2 only"]
        last_id = client.last_event_id
    finally:
        await client.close()
    for n in range(3):
        await publish(http, service, {"channel": ["m2", "m1"], "data": f"again {n}"})
    again = await SSEClient.open(service.port, ["m2", "m1"], last_event_id=last_id)
    try:
        assert [e.data for e in await again.events(3)] == [f"again {n}" for n in range(3)]
        await publish(http, service, {"channel": "m1", "data": "live"})
        assert (await again.next_event()).data == "live"  # nothing else came in between
    finally:
        await again.close()
