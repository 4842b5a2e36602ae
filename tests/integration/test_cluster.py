"""pushsvc on a real Redis Cluster (six loopback redis-servers): channels spread over the
shards, one sharded pub/sub connection per shard per process, failover and a killed master
healed from history -- or told with a reset, never a silent gap."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys

import httpx
import pytest

from pushsvc.broker.cluster import ClusterBroker, slot_of
from pushsvc.publisher import AsyncPublisher
from pushsvc.wire import history_key
from tests.support.cluster import RedisCluster
from tests.support.helpers import publish
from tests.support.procs import wait_until
from tests.support.sse_client import SSEClient

pytestmark = pytest.mark.redis

RESET = "pushsvc.reset"


def cluster_env(cluster: RedisCluster) -> dict[str, str]:
    return {"PUSHSVC_REDIS_CLUSTER_NODES": cluster.seeds, "PUSHSVC_MAX_CHANNELS_PER_STREAM": "100"}


def spread_channels(cluster: RedisCluster, count: int, prefix: str) -> list[str]:
    """`count` channel names covering every master."""
    names = [f"{prefix}-{i}" for i in range(count)]
    owners = {cluster.owner(name).port for name in names}
    assert len(owners) == 3, "the names should cover all three masters"
    return names


async def shard_metric(http: httpx.AsyncClient, service, figure: str, port: int) -> float:
    text = (await http.get(service.base + "/metrics")).text
    prefix = f'pushsvc_redis_shard_{figure}_total{{shard="127.0.0.1:{port}"}} '
    values = [float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix)]
    assert values, f"no {prefix!r} in /metrics"
    return values[0]


def _unready(service) -> str | None:
    answer = httpx.get(service.base + "/readyz", timeout=2)
    return answer.json()["detail"] if answer.status_code == 503 else None


async def ready(http: httpx.AsyncClient, service, timeout: float = 20) -> dict:
    async def poll() -> dict:
        while True:
            answer = await http.get(service.base + "/readyz")
            if answer.status_code == 200:
                return answer.json()
            await asyncio.sleep(0.1)
    return await asyncio.wait_for(poll(), timeout)


async def test_every_stream_on_two_processes_gets_every_event_of_100_channels_once_in_order(
    redis_cluster, service_factory, http
):
    channels = spread_channels(redis_cluster, 100, "spread")
    services = [service_factory(cluster_env(redis_cluster)) for _ in range(2)]
    for service in services:
        assert "every slot covered" in (await ready(http, service))["detail"]
    # Each process: one stream on all 100 channels, plus one single-channel stream per channel
    # on half of them.
    clients = [await SSEClient.open(s.port, channels) for s in services]
    singles = {ch: await SSEClient.open(services[i % 2].port, [ch]) for i, ch in enumerate(channels[:50])}
    for client in [*clients, *singles.values()]:
        await client.wait_open()
    rounds = 5
    for n in range(rounds):
        body = [{"channel": ch, "data": {"ch": ch, "n": n}} for ch in channels]
        answer = await publish(http, services[n % 2], body)
        assert answer.status_code == 202, answer.text
    try:
        for client in clients:
            got = [json.loads(e.data) for e in await client.events(rounds * len(channels), timeout=30)]
            for ch in channels:
                assert [d["n"] for d in got if d["ch"] == ch] == list(range(rounds)), ch
        for client in singles.values():
            got_single = [json.loads(e.data)["n"] for e in await client.events(rounds, timeout=10)]
            assert got_single == list(range(rounds))
        # One sharded pub/sub connection per shard per process, whatever the streams.
        for master in redis_cluster.masters():
            assert redis_cluster.pubsub_clients(master) == 2, master.port
        # /metrics counts messages per shard.
        for service in services:
            for master in redis_cluster.masters():
                assert await shard_metric(http, service, "messages", master.port) > 0, master.port
    finally:
        for client in [*clients, *singles.values()]:
            await client.close()


async def test_a_raw_spublish_reaches_streams_live_without_an_id(redis_cluster, service_factory, http):
    service = service_factory(cluster_env(redis_cluster))
    await ready(http, service)
    client = await SSEClient.open(service.port, ["raw-news"])
    await client.wait_open()
    owner = redis_cluster.owner("raw-news")
    try:
        with owner.client() as node:
            def spublish() -> int:
                return int(node.execute_command("SPUBLISH", "raw-news", json.dumps({"data": "hello", "type": "t"})))
            wait_until(spublish, 10, interval=0.1, what="the stream's subscription on the channel's shard")
        event = await client.next_event(timeout=10)
        assert (event.type, event.data) == ("t", "hello")
        frame = bytes(client.raw[client.raw.index(b"event: t"):])
        assert b"id:" not in frame  # a raw message never gets a position
        assert "classic PUBLISH (flask-sse) is not delivered" in service.log()
    finally:
        await client.close()


async def test_subscriber_counts_add_up_across_processes_on_the_cluster(redis_cluster, service_factory, http):
    services = [service_factory(cluster_env(redis_cluster)) for _ in range(2)]
    for service in services:
        await ready(http, service)
    clients = [await SSEClient.open(services[0].port, ["counted"]) for _ in range(2)]
    clients.append(await SSEClient.open(services[1].port, ["counted"]))
    try:
        for client in clients:
            await client.wait_open()
        answer = await http.get(services[0].base + "/channels/counted",
                                headers={"Authorization": "Bearer test-publish-token"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["subscribers"] == 3
    finally:
        for client in clients:
            await client.close()


async def test_the_publisher_and_the_cli_publish_to_the_cluster_and_a_multi_shard_event_comes_once(
    redis_cluster, service_factory, http
):
    a, b = "pub-a", "pub-c"  # on two different shards
    assert redis_cluster.owner(a).port != redis_cluster.owner(b).port
    service = service_factory(cluster_env(redis_cluster))
    await ready(http, service)
    both = await SSEClient.open(service.port, [a, b])
    await both.wait_open()
    publisher = AsyncPublisher(cluster_nodes=redis_cluster.seeds)
    try:
        ids = await publisher.publish([a, b], {"n": 1}, type="t")
        assert len(ids) == 2 and ids[0] != ids[1]
        event = await both.next_event(timeout=10)
        assert (event.type, json.loads(event.data)) == ("t", {"n": 1})
        # Both copies carry the same event identity (stored on two shards): the stream
        # delivers the event once, and its id advances on both channels.
        stored = []
        for channel in (a, b):
            with redis_cluster.owner(channel).client() as node:
                ((_, fields),) = node.xrange(history_key(channel))
            stored.append(json.loads(fields[b"m"])["pushsvc"])
        assert stored[0][2] == stored[1][2] and stored[0][1] != stored[1][1]
        env = {**os.environ, "PUSHSVC_REDIS_CLUSTER_NODES": redis_cluster.seeds}
        env.pop("PUSHSVC_REDIS_URL", None)
        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "pushsvc.cli", "publish", a, '{"n": 2}'],
            env=env, capture_output=True, text=True, timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ids"][0].endswith("-2")
        second = await both.next_event(timeout=10)
        assert json.loads(second.data) == {"n": 2}  # not the multi-channel event's other copy
        assert sorted(part.rsplit("-", 1)[1] for part in second.last_event_id.split(".")) == ["1", "2"]
    finally:
        await publisher.aclose()
        await both.close()


async def _publisher(http: httpx.AsyncClient, service, channels: list[str], accepted: dict[str, list[int]],
                     stop: asyncio.Event, base: int = 0) -> None:
    """Publishes one event at a time; its numbers are base, base + 1, ..."""
    n = base
    while not stop.is_set():
        ch = random.choice(channels)
        try:
            answer = await publish(http, service, {"channel": ch, "data": {"ch": ch, "n": n}})
        except httpx.HTTPError:
            answer = None
        if answer is not None and answer.status_code == 202:
            accepted[ch].append(n)
        n += 1
        await asyncio.sleep(0.005)


def check_stream(events: list, channels: list[str], accepted: dict[str, list[int]]) -> list[str]:
    """Per channel: received == accepted (as sets: two publishers run concurrently), or a
    reset naming the channel; returns the reset channels.  Never a duplicate; each
    publisher's events in its order."""
    reset: set[str] = set()
    got: dict[str, list[int]] = {ch: [] for ch in channels}
    for event in events:
        if event.type == RESET:
            reset.update(json.loads(event.data)["channels"])
            continue
        data = json.loads(event.data)
        got[data["ch"]].append(data["n"])
    for ch in channels:
        assert len(got[ch]) == len(set(got[ch])), f"{ch}: duplicate"
        for base in {n // PUBLISHER_SPAN for n in got[ch]}:
            mine = [n for n in got[ch] if n // PUBLISHER_SPAN == base]
            assert mine == sorted(mine), f"{ch}: out of order"
        if ch not in reset:
            assert sorted(got[ch]) == sorted(accepted[ch]), f"{ch}: lost events without a reset"
        else:
            assert set(got[ch]) <= set(accepted[ch])
    return sorted(reset)


FINAL = 10**9
PUBLISHER_SPAN = 10**6


class Roamer:
    """A browser that drops its connection at random moments and comes back with
    Last-Event-ID, on one process or the other; keeps every event it read."""

    def __init__(self, ports: list[int], channels: list[str]) -> None:
        self.ports = ports
        self.channels = channels
        self.events: list = []
        self.last_id: str | None = None
        self.reconnects = 0

    async def roam(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._visit(random.uniform(0.2, 0.6))

    async def _visit(self, seconds: float, first: bool = False) -> None:
        client = await SSEClient.open(random.choice(self.ports), self.channels, last_event_id=self.last_id)
        if first:  # until synced: its first id is what later visits resume from (else they'd start fresh)
            try:
                await client.wait_open(timeout=10)
            except BaseException:
                await client.close()
                raise
        try:
            await client.until(lambda c: False, timeout=seconds)
        except (TimeoutError, Exception):
            pass
        finally:
            self.events += client._events
            if client.last_event_id:
                self.last_id = client.last_event_id
            await client.close()
            self.reconnects += 1

    async def finish(self, timeout: float) -> None:
        """Stay connected until every channel's final marker has arrived."""
        client = await SSEClient.open(self.ports[0], self.channels, last_event_id=self.last_id)
        try:
            await client.until(lambda c: _markers(self.events + c._events) >= set(self.channels), timeout)
        finally:
            self.events += client._events
            await client.close()


def _markers(events: list) -> set[str]:
    found = set()
    for event in events:
        if event.type != RESET:
            data = json.loads(event.data)
            if data["n"] == FINAL:
                found.add(data["ch"])
    return found


async def run_publisher_through(
    http: httpx.AsyncClient, services: list, channels: list[str], fault, *, before: float = 1.0,
    after: float = 1.5,
) -> tuple[list[Roamer], dict[str, list[int]], list]:
    """Publish at random (through both processes) while roamers read; run `fault` in a
    thread meanwhile; then a final marker per channel; returns what every roamer read."""
    accepted: dict[str, list[int]] = {ch: [] for ch in channels}
    stop = asyncio.Event()
    roamers = [Roamer([s.port for s in services], channels) for _ in range(3)]
    for roamer in roamers:  # first visit: a fresh stream, so later ones resume with an id
        await roamer._visit(0.2, first=True)
    tasks = [asyncio.ensure_future(_publisher(http, s, channels, accepted, stop, k * PUBLISHER_SPAN))
             for k, s in enumerate(services)]
    tasks += [asyncio.ensure_future(r.roam(stop)) for r in roamers]
    await asyncio.sleep(before)
    outcome = await asyncio.to_thread(fault)
    await asyncio.sleep(after)
    stop.set()
    await asyncio.gather(*tasks)
    for ch in channels:
        answer = await publish(http, services[0], {"channel": ch, "data": {"ch": ch, "n": FINAL}})
        assert answer.status_code == 202, answer.text
        accepted[ch].append(FINAL)
    for roamer in roamers:
        await roamer.finish(timeout=30)
    return roamers, accepted, outcome


async def shard_series(http: httpx.AsyncClient, service, figure: str) -> dict[str, float]:
    """Every ``pushsvc_redis_shard_<figure>_total`` series of /metrics, by shard address."""
    text = (await http.get(service.base + "/metrics")).text
    head = f'pushsvc_redis_shard_{figure}_total{{shard="'
    series = {}
    for line in text.splitlines():
        if line.startswith(head):
            address, value = line[len(head):].split('"} ')
            series[address] = float(value)
    return series


async def test_a_planned_failover_while_publishing_resets_nothing_and_loses_nothing(
    redis_cluster, service_factory, http
):
    channels = spread_channels(redis_cluster, 12, "fo")
    services = [service_factory(cluster_env(redis_cluster)) for _ in range(2)]
    for service in services:
        await ready(http, service)
    target = redis_cluster.owner(channels[0])
    moved = [ch for ch in channels if redis_cluster.owner(ch).port == target.port]
    old_shard = f"127.0.0.1:{target.port}"

    roamers, accepted, new_master = await run_publisher_through(
        http, services, channels, lambda: redis_cluster.failover(target)
    )
    assert redis_cluster.owner(channels[0]).port == new_master.port != target.port
    new_shard = f"127.0.0.1:{new_master.port}"
    for roamer in roamers:
        # What happened: a planned CLUSTER FAILOVER loses nothing, and the proof says so, so
        # every stream got exactly what was accepted, with no reset on any channel.
        resets = check_stream(roamer.events, channels, accepted)
        assert resets == [], f"a planned failover reset {resets}"
        print(f"roamer: {roamer.reconnects} reconnects, no reset (failed-over shard: {moved})")
    for service in services:  # the failed-over shard's channels were re-subscribed on its new master
        assert await shard_metric(http, service, "resubscriptions", new_master.port) >= len(moved)
        # Each process proved the handover lossless (the old master resynchronised partially).
        assert await shard_metric(http, service, "failovers_proven", new_master.port) >= 1
        assert "failover proven lossless" in service.log()
        # The old master's counters stay in /metrics (a series that vanished would look like
        # a counter reset to rate()).
        messages = await shard_series(http, service, "messages")
        assert messages.get(old_shard, 0) > 0 and new_shard in messages, messages
    assert sum(len(accepted[ch]) for ch in moved) > 10


async def test_a_resume_from_before_a_planned_failover_catches_up_exactly(redis_cluster, service_factory, http):
    service = service_factory(cluster_env(redis_cluster))
    await ready(http, service)
    channel = "resume-fo"
    reader = await SSEClient.open(service.port, [channel])
    await reader.wait_open()
    try:
        for n in range(3):
            assert (await publish(http, service, {"channel": channel, "data": n})).status_code == 202
        seen = await reader.events(3)
    finally:
        await reader.close()
    before = seen[-1].last_event_id
    for n in range(3, 5):  # published before the failover, after the reader left
        assert (await publish(http, service, {"channel": channel, "data": n})).status_code == 202
    await asyncio.to_thread(redis_cluster.failover, redis_cluster.owner(channel))
    for n in range(5, 8):  # published after it: same epoch, sequence continued
        assert (await publish(http, service, {"channel": channel, "data": n})).status_code == 202

    epoch = before.split("-")[0]
    other = service_factory(cluster_env(redis_cluster))  # no stream of its own on the channel
    await ready(http, other)
    for reader_service in (service, other):
        answer = await http.get(reader_service.base + "/history", params={"channel": channel, "after": before})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert page["reset"] is None, page
        assert [e["data"] for e in page["events"]] == [3, 4, 5, 6, 7]
        assert [e["id"] for e in page["events"]] == [f"{epoch}-{n}" for n in range(4, 9)]
    resumed = await SSEClient.open(service.port, [channel], last_event_id=before)
    try:
        events = await resumed.events(5, timeout=10)
        assert [(e.type, e.data) for e in events] == [("message", str(n)) for n in range(3, 8)]
        assert events[-1].last_event_id == f"{epoch}-8"
    finally:
        await resumed.close()


async def test_a_killed_master_heals_its_channels_and_the_other_shards_keep_delivering(
    redis_cluster, service_factory, http
):
    channels = spread_channels(redis_cluster, 12, "kill")
    services = [service_factory(cluster_env(redis_cluster)) for _ in range(2)]
    for service in services:
        await ready(http, service)
    target = redis_cluster.owner(channels[0])
    dead = [ch for ch in channels if redis_cluster.owner(ch).port == target.port]
    others = [ch for ch in channels if ch not in dead]
    watcher = await SSEClient.open(services[1].port, others)
    await watcher.wait_open()

    try:
        def kill_and_watch_readiness() -> str:
            """kill -9 the master; /readyz must say which shard is unreachable until the
            replica is promoted, then be ready again."""
            replica = redis_cluster.replica_of(target)
            target.kill()
            answer = wait_until(lambda: _unready(services[0]), 10, 0.05, "/readyz to report the dead shard")
            wait_until(lambda: replica.role() == "master", 30, 0.05, "the replica to be promoted")
            redis_cluster.wait_ok(30, replicated=False)
            return str(answer)

        roamers, accepted, unready = await run_publisher_through(
            http, services, channels, kill_and_watch_readiness, after=2.0
        )
        assert f"127.0.0.1:{target.port}" in unready, unready
        # Streams on the other shards kept receiving throughout (one connection per shard).
        got_others = [json.loads(e.data) for e in watcher._events if e.type != RESET]
        await watcher.until(lambda c: _markers(c._events) >= set(others), timeout=10)
        got_others = [json.loads(e.data) for e in watcher._events if e.type != RESET]
        for ch in others:
            assert sorted(d["n"] for d in got_others if d["ch"] == ch) == sorted(accepted[ch]), ch
        for roamer in roamers:
            resets = check_stream(roamer.events, channels, accepted)
            assert set(resets) <= set(dead), resets
        for service in services:
            await ready(http, service, timeout=30)
    finally:
        await watcher.close()
        await asyncio.to_thread(redis_cluster.restart, target)


async def test_a_failover_that_lost_acknowledged_writes_resets_instead_of_reusing_their_ids(
    redis_cluster, service_factory, http
):
    service = service_factory(cluster_env(redis_cluster))
    await ready(http, service)
    channel = "lossy"
    master = redis_cluster.owner(channel)
    replica = redis_cluster.replica_of(master)
    reader = await SSEClient.open(service.port, [channel])
    await reader.wait_open()
    try:
        for n in range(3):
            assert (await publish(http, service, {"channel": channel, "data": n})).status_code == 202
        with master.client() as node:
            assert node.execute_command("WAIT", 1, 5000) == 1  # these three reached the replica
        replica.pause()  # the next five are acknowledged by the master only:
        with master.client() as node:  # cut the link, so nothing reaches the replica's socket
            node.execute_command("CLIENT", "KILL", "TYPE", "replica")
        for n in range(3, 8):
            assert (await publish(http, service, {"channel": channel, "data": n})).status_code == 202
        seen = await reader.events(8)
        assert [e.data for e in seen] == [str(n) for n in range(8)]
        lost_id = seen[-1].last_event_id
        await reader.close()

        master.kill()
        replica.resume()
        await asyncio.to_thread(
            wait_until, lambda: replica.role() == "master", 30, 0.05, "the replica to be promoted"
        )
        await asyncio.to_thread(redis_cluster.wait_ok, 30, False)
        await ready(http, service, timeout=30)
        lost_epoch = lost_id.split("-")[0]
        # A history read is guarded too: the promoted replica holds the old epoch's first
        # three entries, which must not be handed out as current.
        broker = ClusterBroker(redis_cluster.seeds.split(","))
        try:
            await broker.refresh()
            read = await broker.history(channel, 0)
        finally:
            await broker.stop()
        assert read.epoch != lost_epoch and read.entries == [], read
        answer = await http.get(service.base + "/history", params={"channel": channel, "after": lost_id})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert page["reset"] == "history_lost", page
        assert not page["last_id"].startswith(lost_epoch), page
        for n in range(8, 18):  # the promoted replica had only 3: these would reuse 4..8
            assert (await publish(http, service, {"channel": channel, "data": n})).status_code == 202

        resumed = await SSEClient.open(service.port, [channel], last_event_id=lost_id)
        try:
            first = await resumed.next_event(timeout=10)
            assert first.type == RESET, f"resumed silently after a lossy failover: {first}"
            assert json.loads(first.data)["channels"] == [channel]
            await publish(http, service, {"channel": channel, "data": "after"})
            assert (await resumed.next_event(timeout=10)).data == "after"
        finally:
            await resumed.close()
    finally:
        await reader.close()
        if replica.proc is not None:
            replica.resume()
        if not master.alive():
            await asyncio.to_thread(redis_cluster.restart, master)


async def test_a_backend_publisher_with_no_service_to_prove_a_failover_waits_then_starts_a_new_epoch(
    redis_cluster,
):
    """No pushsvc process is running to prove the failover lossless: the publisher's call is
    answered "pending" for the guard's grace, retried, then the channel starts afresh --
    never a silent continuation of an unproven sequence."""
    channel = "backend-only"
    publisher = AsyncPublisher(cluster_nodes=redis_cluster.seeds)
    try:
        (before,) = await publisher.publish(channel, {"n": 1})
        await asyncio.to_thread(redis_cluster.failover, redis_cluster.owner(channel))
        (after,) = await publisher.publish(channel, {"n": 2})
    finally:
        await publisher.aclose()
    assert after.split("-")[0] != before.split("-")[0], (before, after)
    assert after.endswith("-1")


def _link_status(node) -> str:
    with node.client() as client:
        return str(client.info("replication").get("master_link_status"))


async def test_a_forced_failover_that_lost_writes_of_a_live_master_resets(redis_cluster, service_factory, http):
    """The old master stays up and answers, but it had acknowledged writes its replica never
    received: it can only rejoin with a full resync, so nothing proves the handover lossless."""
    service = service_factory(cluster_env(redis_cluster))
    await ready(http, service)
    channel = "lossy-alive"
    master = redis_cluster.owner(channel)
    replica = redis_cluster.replica_of(master)
    for n in range(3):
        assert (await publish(http, service, {"channel": channel, "data": n})).status_code == 202
    with master.client() as node:
        assert node.execute_command("WAIT", 1, 5000) == 1
    try:
        with replica.client() as node:  # it can no longer authenticate to its master: cut off
            node.config_set("masterauth", "not-the-password")
        with master.client() as node:
            node.execute_command("CLIENT", "KILL", "TYPE", "replica")
        await asyncio.to_thread(wait_until, lambda: _link_status(replica) == "down", 10, 0.05, "the link to drop")
        ids = []
        for n in range(3, 6):  # acknowledged by the master only
            answer = await publish(http, service, {"channel": channel, "data": n})
            assert answer.status_code == 202
            ids.append(answer.json()["id"])
        with replica.client() as node:  # no agreement from the old master, which stays up
            node.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
        await asyncio.to_thread(wait_until, lambda: replica.role() == "master", 30, 0.05, "the takeover")
    finally:
        with replica.client() as node:
            node.config_set("masterauth", "")
    await asyncio.to_thread(redis_cluster.wait_ok, 30)
    await asyncio.to_thread(wait_until, lambda: _link_status(master) == "up", 30, 0.05, "the old master to resync")
    await ready(http, service, timeout=30)
    for n in range(6, 12):  # the new master had only 3: these would reuse 4..6
        assert (await publish(http, service, {"channel": channel, "data": n})).status_code == 202
    resumed = await SSEClient.open(service.port, [channel], last_event_id=ids[-1])
    try:
        first = await resumed.next_event(timeout=10)
        assert first.type == RESET, f"resumed silently after losing acknowledged writes: {first}"
        assert json.loads(first.data)["channels"] == [channel]
    finally:
        await resumed.close()
    assert await shard_metric(http, service, "failovers_unproven", replica.port) >= 1
    assert "without a proof of no loss" in service.log()


async def test_a_slot_migrating_under_a_busy_channel_loses_nothing_silently_and_duplicates_nothing(
    redis_cluster, service_factory, http
):
    channels = spread_channels(redis_cluster, 6, "mig")
    busy = channels[0]
    services = [service_factory(cluster_env(redis_cluster)) for _ in range(2)]
    for service in services:
        await ready(http, service)
    source = redis_cluster.owner(busy)
    target = next(m for m in redis_cluster.masters() if m.port != source.port)

    roamers, accepted, _ = await run_publisher_through(
        http, services, channels, lambda: redis_cluster.move_slot(slot_of(busy), target)
    )
    assert redis_cluster.owner(busy).port == target.port
    for roamer in roamers:
        resets = check_stream(roamer.events, channels, accepted)
        # The target's replication id differs from the source's, so the migrated channel may
        # start a new epoch (a reset, never a silent gap); no other channel is touched.
        assert set(resets) <= {busy}, resets
        print(f"roamer: reset channels {resets}")
    await asyncio.to_thread(redis_cluster.move_slot, slot_of(busy), source)
