"""Redis Cluster topology changes without a failover, on a real cluster: a `redis-cli --cluster
reshard` under a busy channel, the ASK and TRYAGAIN answers of a slot in migration, the
server's unprompted ``sunsubscribe`` when a slot leaves a node; and clusters that need a
password or TLS."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from pushsvc.broker import Idempotency
from pushsvc.broker.cluster import ClusterBroker, slot_of
from pushsvc.events import Event
from pushsvc.publisher import AsyncPublisher
from pushsvc.wire import history_key, live_channel, meta_key, parse_stream_id
from tests.support.cluster import ClusterNode, RedisCluster
from tests.support.helpers import publish
from tests.support.procs import wait_until
from tests.support.sse_client import SSEClient
from tests.support.whatwg import Event as SSEEvent

pytestmark = pytest.mark.redis

RESET = "pushsvc.reset"
FINAL = 10**9
SPAN = 10**6  # publisher k numbers its events k * SPAN, k * SPAN + 1, ...


def cluster_env(cluster: RedisCluster, **extra: str) -> dict[str, str]:
    return {"PUSHSVC_REDIS_CLUSTER_NODES": cluster.seeds, **extra}


async def ready(http: httpx.AsyncClient, service: Any, timeout: float = 20) -> None:
    async def poll() -> None:
        while (await http.get(service.base + "/readyz")).status_code != 200:
            await asyncio.sleep(0.1)
    await asyncio.wait_for(poll(), timeout)


def channel_in_slot(slot: int, prefix: str) -> str:
    """A channel name whose hash slot is `slot` (names cannot carry a {hash tag})."""
    for i in range(1_000_000):
        name = f"{prefix}-{i}"
        if slot_of(name) == slot:
            return name
    raise LookupError(slot)


def other_master(cluster: RedisCluster, node: ClusterNode) -> ClusterNode:
    return next(m for m in cluster.masters() if m.port != node.port)


# -- a slot migration driven by hand, step by step ----------------------------------------------


def begin_migration(cluster: RedisCluster, slot: int, source: ClusterNode, target: ClusterNode) -> None:
    with source.client() as src, target.client() as dst:
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", cluster.node_id(source))
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", cluster.node_id(target))


def migrate_keys(source: ClusterNode, target: ClusterNode, slot: int, keys: list[str] | None = None) -> None:
    """MIGRATE `keys` (default: every key of the slot) from `source` to `target`."""
    with source.client() as src:
        if keys is None:
            keys = [k.decode() for k in src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10_000)]
        if keys:
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)


def assign(cluster: RedisCluster, slot: int, source: ClusterNode, target: ClusterNode) -> None:
    """SETSLOT NODE on the target, the other masters, and the source last: when the source
    lets the slot go (and tells its sharded subscribers), every master already agrees."""
    target_id = cluster.node_id(target)
    for node in sorted(cluster.masters(), key=lambda m: (m.port == source.port, m.port != target.port)):
        with node.client() as client:
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    cluster.wait_ok()


def errorstat(node: ClusterNode, error: str) -> int:
    with node.client() as client:
        stats = client.info("errorstats")
    entry = stats.get(f"errorstat_{error}", {})
    return int(entry.get("count", 0)) if isinstance(entry, dict) else 0


@pytest.fixture
def restore_slots(redis_cluster: RedisCluster) -> Iterator[Callable[[int], None]]:
    """Register a slot to hand back to its current owner after the test (whatever state the
    test left it in: migrating, importing or moved)."""
    slots: dict[int, ClusterNode] = {}

    def remember(slot: int) -> None:
        slots.setdefault(slot, redis_cluster.owner_of_slot(slot))

    yield remember
    for slot, owner in slots.items():
        for node in redis_cluster.masters():
            with node.client() as client:
                client.execute_command("CLUSTER SETSLOT", slot, "STABLE")
        current = redis_cluster.owner_of_slot(slot)
        if current.port != owner.port:
            redis_cluster.move_slot(slot, owner)
        else:  # keys a test migrated to another node by hand come back
            for node in redis_cluster.masters():
                if node.port != owner.port:
                    with node.client() as client:
                        stray = client.execute_command("CLUSTER GETKEYSINSLOT", slot, 10_000)
                        if stray:
                            client.execute_command("DEL", *stray)


# -- streams and publishers -------------------------------------------------------------------


class Reader:
    """An open stream read all along (never reconnecting): it must stay open."""

    def __init__(self, client: SSEClient, channels: list[str]) -> None:
        self.client = client
        self.channels = channels
        self.task = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        while not self.client.ended:
            await self.client._pump()

    @property
    def events(self) -> list[SSEEvent]:
        return self.client._events

    def finished(self) -> bool:
        return markers(self.events) >= set(self.channels)

    async def until_finished(self, timeout: float) -> None:
        """Until every channel's final marker came (or the stream ended)."""
        async def poll() -> None:
            while not self.finished() and not self.client.ended:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(poll(), timeout)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.close()


def markers(events: list[SSEEvent]) -> set[str]:
    return {json.loads(e.data)["ch"] for e in events if e.type != RESET and json.loads(e.data)["n"] == FINAL}


class Ledger:
    """What the publishers were told: accepted (number -> id) per channel, and the numbers
    whose outcome is unknown (a 503 outcome_unknown or a lost answer)."""

    def __init__(self, channels: list[str]) -> None:
        self.accepted: dict[str, dict[int, str]] = {ch: {} for ch in channels}
        self.unknown: set[int] = set()
        self.refused = 0

    async def publish(self, http: httpx.AsyncClient, service: Any, ch: str, n: int) -> None:
        try:
            answer = await publish(http, service, {"channel": ch, "data": {"ch": ch, "n": n}})
        except httpx.HTTPError:
            self.unknown.add(n)
            return
        if answer.status_code == 202:
            self.accepted[ch][n] = answer.json()["id"]
        elif answer.json().get("error") == "outcome_unknown":
            self.unknown.add(n)
        else:
            self.refused += 1

    async def run(self, http: httpx.AsyncClient, service: Any, k: int, pick: Callable[[], str],
                  stop: asyncio.Event) -> None:
        n = k * SPAN
        while not stop.is_set():
            await self.publish(http, service, pick(), n)
            n += 1
            await asyncio.sleep(0.003)


def check_stream(events: list[SSEEvent], channels: list[str], ledger: Ledger) -> list[str]:
    """Per channel: no duplicate, each publisher's events in order, and exactly the accepted
    events -- or, for a channel named by a reset, every accepted event of the epoch before it
    and every accepted event after the reset's position.  Returns the reset channels."""
    order = sorted(channels)
    got: dict[str, list[int]] = {ch: [] for ch in channels}
    resets: dict[str, list[tuple[str, int]]] = {ch: [] for ch in channels}
    for event in events:
        data = json.loads(event.data)
        if event.type == RESET:
            positions = parse_stream_id(data["position"], len(channels))
            assert positions is not None, data
            for ch in data["channels"]:
                at = positions[order.index(ch)]
                resets[ch].append((at.epoch or "", at.seq))
            continue
        got[data["ch"]].append(data["n"])
    for ch in channels:
        numbers, accepted = got[ch], ledger.accepted[ch]
        assert len(numbers) == len(set(numbers)), f"{ch}: duplicate"
        for base in {n // SPAN for n in numbers}:
            mine = [n for n in numbers if n // SPAN == base]
            assert mine == sorted(mine), f"{ch}: out of order"
        assert set(numbers) <= set(accepted) | ledger.unknown, f"{ch}: an event nobody published"
        if not resets[ch]:
            assert set(accepted) <= set(numbers), f"{ch}: lost {sorted(set(accepted) - set(numbers))[:10]}"
            continue
        first_epoch = min(accepted.values(), key=_seq).rsplit("-", 1)[0] if accepted else ""
        before = {n for n, i in accepted.items() if i.rsplit("-", 1)[0] == first_epoch}
        assert before <= set(numbers), f"{ch}: lost before the reset {sorted(before - set(numbers))[:10]}"
        epoch, seq = resets[ch][-1]
        after = {n for n, i in accepted.items() if i.rsplit("-", 1)[0] == epoch and _seq(i) > seq}
        assert after <= set(numbers), f"{ch}: lost after the reset {sorted(after - set(numbers))[:10]}"
    return sorted(ch for ch in channels if resets[ch])


def _seq(event_id: str) -> int:
    return int(event_id.rsplit("-", 1)[1])


# -- 1. redis-cli --cluster reshard under a busy channel ----------------------------------------


async def test_redis_cli_reshard_of_a_busy_channels_slot_keeps_streams_open_without_loss_or_duplicate(
    redis_cluster, service_factory, http, restore_slots
):
    source = redis_cluster.masters()[0]
    target = other_master(redis_cluster, source)
    slot = redis_cluster.slots_of(source)[0]  # what `--cluster-slots 1` moves: the source's lowest
    busy = channel_in_slot(slot, "reshard")
    calm = [channel_in_slot(redis_cluster.slots_of(m)[-1], f"calm{m.port}") for m in redis_cluster.masters()]
    channels = [busy, *calm]
    restore_slots(slot)
    services = [service_factory(cluster_env(redis_cluster)) for _ in range(2)]
    for service in services:
        await ready(http, service)
    readers = []
    for service in services:
        for names in (channels, [busy]):
            client = await SSEClient.open(service.port, names)
            await client.wait_open()
            readers.append(Reader(client, names))

    ledger = Ledger(channels)
    stop = asyncio.Event()
    pick = lambda: busy if random.random() < 0.8 else random.choice(calm)  # noqa: E731
    publishers = [asyncio.ensure_future(ledger.run(http, s, k, pick, stop)) for k, s in enumerate(services)]
    try:
        # Warm up: the slot fills with the channel's keys (history, meta, one idempotency
        # record per publish), so the reshard migrates many keys while events keep coming.
        await asyncio.to_thread(wait_until, lambda: len(ledger.accepted[busy]) >= 150, 60, 0.05,
                                "events accepted on the busy channel")
        with source.client() as node:
            keys_before = node.execute_command("CLUSTER COUNTKEYSINSLOT", slot)
        output = await asyncio.to_thread(redis_cluster.reshard, source, target, 1)
        accepted_at_reshard = len(ledger.accepted[busy])
        await asyncio.to_thread(wait_until, lambda: len(ledger.accepted[busy]) >= accepted_at_reshard + 50,
                                60, 0.05, "events accepted on the busy channel after the reshard")
    finally:
        stop.set()
        await asyncio.gather(*publishers)
    assert f"Moving slot {slot} from" in output, output[-1000:]
    assert redis_cluster.owner(busy).port == target.port
    for ch in channels:
        await ledger.publish(http, services[0], ch, FINAL)
        assert FINAL in ledger.accepted[ch], ch
    try:
        for reader in readers:
            await reader.until_finished(timeout=30)
        for reader in readers:
            assert not reader.client.ended, "a stream was closed"
            resets = check_stream(reader.events, reader.channels, ledger)
            assert set(resets) <= {busy}, resets
            print(f"stream {reader.channels}: resets {resets}")
        # The busy channel ends up subscribed on its new owner only, once per process; each
        # process still holds one pub/sub connection per shard.
        for name in (busy, live_channel(busy)):
            assert redis_cluster.shard_subscribers(target, name) == 2, name
            assert redis_cluster.shard_subscribers(source, name) == 0, name
        for master in redis_cluster.masters():
            assert redis_cluster.pubsub_clients(master) == 2, master.port
        print(f"reshard moved {keys_before} keys; accepted {sum(map(len, ledger.accepted.values()))}, "
              f"unknown {len(ledger.unknown)}, refused {ledger.refused}; source answered "
              f"ASK {errorstat(source, 'ASK')}, TRYAGAIN {errorstat(source, 'TRYAGAIN')} times")
    finally:
        for reader in readers:
            await reader.close()


# -- 3. the server's unprompted sunsubscribe when a slot leaves a node ---------------------------


async def test_a_slot_leaving_its_node_resubscribes_on_the_new_owner_and_catches_up_from_history(
    redis_cluster, service_factory, http, restore_slots
):
    """No failover, no redirect seen by the service, and its periodic topology read is off
    (an hour): only the ``sunsubscribe`` push the old owner sends when the slot leaves it
    can tell the service.  The events published on the new owner before the service
    subscribed there come from history, exactly once, and the stream stays open."""
    channel = "sunsub-news"
    slot = slot_of(channel)
    source = redis_cluster.owner(channel)
    target = other_master(redis_cluster, source)
    restore_slots(slot)
    service = service_factory(cluster_env(redis_cluster, PUSHSVC_REDIS_CLUSTER_REFRESH_SECONDS="3600"))
    await ready(http, service)
    client = await SSEClient.open(service.port, [channel])
    await client.wait_open()
    await asyncio.to_thread(wait_until, lambda: redis_cluster.shard_subscribers(source, live_channel(channel)),
                            10, 0.05, "the subscription on the old owner")
    # Published on the new owner (a publisher that sees only it), after the slot is its and
    # before the old owner lets it go: the service's subscription on the old owner misses them.
    publisher = AsyncPublisher(cluster_nodes=[target.url])
    try:
        await asyncio.to_thread(begin_migration, redis_cluster, slot, source, target)
        await asyncio.to_thread(migrate_keys, source, target, slot)
        with target.client() as node:
            node.execute_command("CLUSTER SETSLOT", slot, "NODE", redis_cluster.node_id(target))
        assert redis_cluster.shard_subscribers(target, live_channel(channel)) == 0  # so not delivered live
        ids = [await publisher.publish(channel, {"n": n}) for n in range(3)]
        await asyncio.to_thread(assign, redis_cluster, slot, source, target)  # the source sends sunsubscribe
        got = await client.events(3, timeout=15)
        assert [json.loads(e.data) for e in got] == [{"n": n} for n in range(3)]
        assert got[-1].last_event_id == ids[-1][0]
        await asyncio.to_thread(wait_until, lambda: redis_cluster.shard_subscribers(target, live_channel(channel)),
                                10, 0.05, "the subscription on the new owner")
        assert redis_cluster.shard_subscribers(source, live_channel(channel)) == 0
        await publisher.publish(channel, {"n": 3})  # and live again
        assert json.loads((await client.next_event(timeout=10)).data) == {"n": 3}
        assert not client.ended
    finally:
        await publisher.aclose()
        await client.close()
