"""Redis Cluster topology changes without a failover, on a real cluster: a `redis-cli --cluster
reshard` under a busy channel, the ASK and TRYAGAIN answers of a slot in migration, the
server's unprompted ``sunsubscribe`` when a slot leaves a node; and clusters that need a
password or TLS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

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


def migrate_keys(source: ClusterNode, target: ClusterNode, slot: int, keys: list[Any] | None = None) -> None:
    """MIGRATE `keys` (default: every key of the slot) from `source` to `target`."""
    with source.client() as src:
        if keys is None:
            keys = list(src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10_000))
        if keys:
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)


def assign(cluster: RedisCluster, slot: int, source: ClusterNode, target: ClusterNode, wait: bool = True) -> None:
    """SETSLOT NODE on the target, the other masters, and the source last: when the source
    lets the slot go (and tells its sharded subscribers), every master already agrees."""
    target_id = cluster.node_id(target)
    for node in sorted(cluster.masters(), key=lambda m: (m.port == source.port, m.port != target.port)):
        with node.client() as client:
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    if wait:
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
        else:  # keys a test migrated by hand to a node that did not get the slot: dropped
            for node in redis_cluster.masters():
                if node.port != owner.port:
                    drop_keys(redis_cluster, node, slot, owner)


def drop_keys(cluster: RedisCluster, node: ClusterNode, slot: int, owner: ClusterNode) -> None:
    with node.client() as client:
        keys = client.execute_command("CLUSTER GETKEYSINSLOT", slot, 10_000)
        if keys:  # a node that does not own the slot serves its keys only while importing it
            client.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", cluster.node_id(owner))
            asking(node, "DEL", *keys)
            client.execute_command("CLUSTER SETSLOT", slot, "STABLE")


def asking(node: ClusterNode, *command: Any) -> Any:
    """`command` on a node importing its keys' slot (ASKING first, same connection)."""
    with node.client() as client, client.pipeline(transaction=False) as pipe:
        pipe.execute_command("ASKING")
        pipe.execute_command(*command)
        return pipe.execute()[1]


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


def pristine(node: ClusterNode) -> bool:
    """The node never took over another master's history (``master_replid2`` all zeros)."""
    with node.client() as client:
        return str(client.info("replication").get("master_replid2", "")).strip("0") == ""


@pytest.fixture
def resharding_cluster(redis_cluster: RedisCluster) -> Iterator[RedisCluster]:
    """The session's cluster while one of its masters never took over another's history (a
    target that may keep a moved channel's ids; earlier failover tests promote replicas),
    else a cluster of its own."""
    if any(pristine(m) for m in redis_cluster.masters()):
        print("resharding on the session's cluster")
        yield redis_cluster
        return
    print("resharding on a cluster of its own: every master of the session's took over another's history")
    fresh = RedisCluster()
    try:
        fresh.start()
        yield fresh
    finally:
        fresh.stop()


async def test_redis_cli_reshard_of_a_busy_channels_slot_keeps_streams_open_without_loss_or_duplicate(
    resharding_cluster, service_factory, http, restore_slots
):
    """The issue's "no loss, no duplicate", and no reset: the moved channel keeps its epoch
    (the target never took over another master's history, and the services saw the slot
    leave a master they knew), so every stream gets every accepted event exactly once, in
    order, and stays open."""
    redis_cluster = resharding_cluster
    target = next(m for m in redis_cluster.masters() if pristine(m))
    source = other_master(redis_cluster, target)
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
            assert not [e for e in reader.events if e.type == RESET], "a stream was reset"
            check_stream(reader.events, reader.channels, ledger)
            received: dict[str, list[int]] = {ch: [] for ch in reader.channels}
            for event in reader.events:
                data = json.loads(event.data)
                if data["n"] not in ledger.unknown:  # stored or not: either is fine
                    received[data["ch"]].append(data["n"])
            for ch in reader.channels:  # every accepted event exactly once, in the order of its id
                accepted = sorted(ledger.accepted[ch], key=lambda n, ch=ch: _seq(ledger.accepted[ch][n]))
                assert received[ch] == accepted, f"{ch}: {len(received[ch])} received, {len(accepted)} accepted"
        for ch in channels:  # one epoch all along: the moved channel's ids were kept
            epochs = {i.rsplit("-", 1)[0] for i in ledger.accepted[ch].values()}
            assert len(epochs) == 1, f"{ch}: epochs {epochs}"
        # The busy channel ends up subscribed on its new owner only, once per process; each
        # process still holds one pub/sub connection per shard.
        for name in (busy, live_channel(busy)):
            assert redis_cluster.shard_subscribers(target, name) == 2, name
            assert redis_cluster.shard_subscribers(source, name) == 0, name
        counts = lambda: {m.port: redis_cluster.pubsub_clients(m) for m in redis_cluster.masters()}  # noqa: E731
        await asyncio.to_thread(wait_until, lambda: set(counts().values()) == {2}, 10, 0.1,
                                "one pub/sub connection per shard per process")  # earlier tests' are gone
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
    can tell the service.  Events published on the new owner before the service subscribed
    there come from history, exactly once, and the stream stays open."""
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
    publisher = AsyncPublisher(cluster_nodes=[target.url])  # it sees only the new owner
    try:
        # The service is stopped (SIGSTOP, well under its pub/sub liveness bound, so no
        # reconnect hides the push) while the slot moves and three events are published on
        # the new owner: they cannot reach it live.
        await asyncio.to_thread(begin_migration, redis_cluster, slot, source, target)
        with service_stopped(service):
            await asyncio.to_thread(migrate_keys, source, target, slot)
            await asyncio.to_thread(assign, redis_cluster, slot, source, target, False)
            ids = [await publisher.publish(channel, {"n": n}) for n in range(3)]
            assert redis_cluster.shard_subscribers(target, live_channel(channel)) == 0
        got = await client.events(3, timeout=15)
        assert [json.loads(e.data) for e in got] == [{"n": n} for n in range(3)]
        assert got[-1].last_event_id == ids[-1][0]
        await asyncio.to_thread(wait_until, lambda: redis_cluster.shard_subscribers(target, live_channel(channel)),
                                10, 0.05, "the subscription on the new owner")
        assert redis_cluster.shard_subscribers(source, live_channel(channel)) == 0
        await publisher.publish(channel, {"n": 3})  # and live again
        assert json.loads((await client.next_event(timeout=10)).data) == {"n": 3}
        assert not client.ended
        assert "redis dropped a sharded subscription (slot moved)" in service.log()
    finally:
        await publisher.aclose()
        await client.close()


@contextlib.contextmanager
def service_stopped(service: Any) -> Iterator[None]:
    """SIGSTOP the service's processes (its own process group) for the block."""
    os.killpg(service.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(service.proc.pid, signal.SIGCONT)


# -- 2. ASK and TRYAGAIN while a slot migrates (driven by hand, one step at a time) ------------


class Recorder:
    """A listener without a hub: the broker's tests need no streams."""

    def __init__(self) -> None:
        self.subscribed: list[str] = []

    def on_message(self, channel: str, payload: bytes, trusted: bool = True) -> None:
        pass

    def on_subscribed(self, channel: str) -> None:
        self.subscribed.append(channel)

    def local_subscribers(self, channel: str) -> int:
        return 0


@pytest.fixture
async def broker(redis_cluster: RedisCluster) -> AsyncIterator[ClusterBroker]:
    """A ClusterBroker in the test's process, without periodic topology reads (only what a
    redirect triggers)."""
    cluster_broker = ClusterBroker(redis_cluster.seeds.split(","), refresh_interval_seconds=3600)
    await cluster_broker.start(Recorder())

    async def until_ready() -> None:
        while not cluster_broker.status()[0]:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(until_ready(), 20)
    yield cluster_broker
    await cluster_broker.stop()


def between_attempts(broker: ClusterBroker, step: Callable[[], None]) -> list[int]:
    """Run `step` (in a thread) when the broker pauses after its first redirected attempt,
    before it reads the topology again; returns the list of pauses seen (one entry each)."""
    pauses: list[int] = []
    refresh = broker._refresh_quietly

    async def pause_then_refresh() -> None:
        pauses.append(len(pauses))
        if len(pauses) == 1:
            await asyncio.to_thread(step)
        await refresh()

    broker._refresh_quietly = pause_then_refresh  # type: ignore[method-assign]
    return pauses


async def test_a_publish_answered_tryagain_during_a_migration_is_sent_again_and_stored_once(
    redis_cluster, broker, restore_slots
):
    """The slot is migrating and the channel's keys are still on the source: the publish
    script's new idempotency record is not there, its meta and history are -- TRYAGAIN.
    The broker waits and sends it again; meanwhile the migration ends."""
    channel = "tryagain-news"
    slot, source = slot_of(channel), redis_cluster.owner(channel)
    target = other_master(redis_cluster, source)
    restore_slots(slot)
    await broker.publish([Event((channel,), "before")])
    await asyncio.to_thread(begin_migration, redis_cluster, slot, source, target)
    tryagain = errorstat(source, "TRYAGAIN")

    def finish_migration() -> None:
        assert errorstat(source, "TRYAGAIN") > tryagain, "the first attempt should have been answered TRYAGAIN"
        migrate_keys(source, target, slot)
        assign(redis_cluster, slot, source, target)

    pauses = between_attempts(broker, finish_migration)
    published = await broker.publish([Event((channel,), "during")])
    assert pauses, "the publish was never retried"
    with target.client() as node:
        stored = node.xrange(history_key(channel))
    during = [entry_id for entry_id, fields in stored if b'"during"' in fields[b"m"]]
    assert len(during) == 1, stored  # stored once, on the new owner
    assert published.ids[0][0].endswith(f"-{int(during[0].decode().split('-')[1])}")


async def test_a_publish_redirected_until_the_broker_gives_up_says_nothing_was_stored(
    redis_cluster, service_factory, http, restore_slots
):
    """A migration that does not end (the test holds it): every attempt is answered
    TRYAGAIN, none ran, so the answer is 503 broker_unavailable (not outcome_unknown)."""
    channel = "held-migration"
    slot, source = slot_of(channel), redis_cluster.owner(channel)
    target = other_master(redis_cluster, source)
    restore_slots(slot)
    service = service_factory(cluster_env(redis_cluster))
    await ready(http, service)
    assert (await publish(http, service, {"channel": channel, "data": 1})).status_code == 202
    await asyncio.to_thread(begin_migration, redis_cluster, slot, source, target)
    answer = await publish(http, service, {"channel": channel, "data": 2})
    assert answer.status_code == 503 and answer.json()["error"] == "broker_unavailable", answer.text
    with source.client() as node:
        assert node.xlen(history_key(channel)) == 1


async def test_an_idempotent_retry_of_keys_already_migrated_is_asked_of_the_target_and_replayed(
    redis_cluster, broker, restore_slots
):
    """Every key of the slot (the channel's meta, history and the request's idempotency
    record) has moved to the target, the slot is still migrating: the source answers ASK;
    asked with ASKING, the target finds the record and answers the original ids."""
    channel = "ask-order"
    slot, source = slot_of(channel), redis_cluster.owner(channel)
    target = other_master(redis_cluster, source)
    restore_slots(slot)
    idem = Idempotency("p:test", "order-17", 300)
    first = await broker.publish([Event((channel,), {"order": 17})], idem)
    await asyncio.to_thread(begin_migration, redis_cluster, slot, source, target)
    await asyncio.to_thread(migrate_keys, source, target, slot)
    asks = errorstat(source, "ASK")
    again = await broker.publish([Event((channel,), {"order": 17})], idem)
    assert errorstat(source, "ASK") > asks
    assert again.replayed and again.ids == first.ids
    assert asking(target, "XLEN", history_key(channel)) == 1  # nothing stored twice


async def test_a_history_read_of_keys_already_migrated_is_asked_of_the_target(
    redis_cluster, broker, restore_slots
):
    channel = "ask-history"
    slot, source = slot_of(channel), redis_cluster.owner(channel)
    target = other_master(redis_cluster, source)
    restore_slots(slot)
    await broker.publish([Event((channel,), n) for n in range(3)])
    await asyncio.to_thread(begin_migration, redis_cluster, slot, source, target)
    await asyncio.to_thread(migrate_keys, source, target, slot)
    asks = errorstat(source, "ASK")
    page = await broker.history(channel, 1)
    assert errorstat(source, "ASK") > asks
    assert (page.last_seq, page.first_seq, [seq for seq, _ in page.entries]) == (3, 1, [2, 3])


async def test_a_history_read_while_a_channels_keys_are_split_between_two_nodes_waits_for_the_move(
    redis_cluster, broker, restore_slots
):
    """History moved, meta not yet: asking the target alone would read a channel without
    meta (as if its history were lost); the read waits until both have moved."""
    channel = "split-history"
    slot, source = slot_of(channel), redis_cluster.owner(channel)
    target = other_master(redis_cluster, source)
    restore_slots(slot)
    await broker.publish([Event((channel,), n) for n in range(3)])
    await asyncio.to_thread(begin_migration, redis_cluster, slot, source, target)
    await asyncio.to_thread(migrate_keys, source, target, slot, [history_key(channel)])
    pauses = between_attempts(broker, lambda: migrate_keys(source, target, slot, [meta_key(channel)]))
    page = await broker.history(channel, 0)
    assert pauses, "the read should have waited for the meta key"
    assert (page.last_seq, [seq for seq, _ in page.entries]) == (3, [1, 2, 3])


# -- 4. clusters behind a password and behind TLS ------------------------------------------------

PASSWORD = "s3cret-cluster-pw"


@pytest.fixture
def password_cluster() -> Iterator[RedisCluster]:
    """Three masters (no replicas) with requirepass and masterauth, for its one test only."""
    cluster = RedisCluster(size=3, password=PASSWORD)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def tls_cluster() -> Iterator[RedisCluster]:
    """Three masters speaking TLS only (clients, cluster bus, replication), with a CA and a
    certificate made by openssl at start, for its one test only."""
    cluster = RedisCluster(size=3, tls=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def stream_and_publish_end_to_end(cluster: RedisCluster, service_factory: Any, http: httpx.AsyncClient,
                                        prefix: str) -> Any:
    """A stream on one channel per master gets an event published through the service and
    one from `pushsvc.publisher`; each process holds one pub/sub connection per master."""
    channels = [channel_in_slot(cluster.slots_of(m)[0], prefix) for m in cluster.masters()]
    service = service_factory(cluster_env(cluster))
    await ready(http, service)
    client = await SSEClient.open(service.port, channels)
    publisher = AsyncPublisher(cluster_nodes=cluster.seeds)
    try:
        await client.wait_open()
        for ch in channels:
            answer = await publish(http, service, {"channel": ch, "data": {"ch": ch, "via": "http"}})
            assert answer.status_code == 202, answer.text
            await publisher.publish(ch, {"ch": ch, "via": "publisher"})
        got = [json.loads(e.data) for e in await client.events(2 * len(channels), timeout=15)]
        assert sorted((d["ch"], d["via"]) for d in got) == sorted(
            (ch, via) for ch in channels for via in ("http", "publisher"))
        for master in cluster.masters():
            assert cluster.pubsub_clients(master) == 1, master.port
    finally:
        await publisher.aclose()
        await client.close()
    return service


async def test_a_password_protected_cluster_streams_and_publishes_end_to_end(password_cluster, service_factory, http):
    service = await stream_and_publish_end_to_end(password_cluster, service_factory, http, "pw")
    assert PASSWORD not in service.log()
    # The same seeds without the password: not ready, and saying why.
    seeds = ",".join(f"redis://127.0.0.1:{n.port}" for n in password_cluster.nodes[:2])
    refused = service_factory({"PUSHSVC_REDIS_CLUSTER_NODES": seeds})
    answer = await http.get(refused.base + "/readyz")
    assert answer.status_code == 503 and "redis cluster" in answer.json()["detail"], answer.text


async def test_a_tls_cluster_streams_and_publishes_end_to_end(tls_cluster, service_factory, http):
    await stream_and_publish_end_to_end(tls_cluster, service_factory, http, "tls")
    # Without the CA, the nodes' certificate is not trusted: not ready.
    seeds = ",".join(f"rediss://127.0.0.1:{n.port}" for n in tls_cluster.nodes[:2])
    untrusted = service_factory({"PUSHSVC_REDIS_CLUSTER_NODES": seeds})
    answer = await http.get(untrusted.base + "/readyz")
    assert answer.status_code == 503, answer.text
