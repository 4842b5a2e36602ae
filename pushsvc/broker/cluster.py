"""The Redis Cluster broker: each channel on the shard owning its hash tag's slot, sharded
pub/sub, one pub/sub connection per shard per process, topology changes healed from history.

Chosen by ``PUSHSVC_REDIS_CLUSTER_NODES`` (comma-separated seed URLs).  Keys and names are
the single-Redis ones (`pushsvc.wire`): every key of a channel and its internal live channel
carry the channel's hash tag, so one script call stores and ``SPUBLISH``es on one shard.

Topology.  A refresher task reads ``CLUSTER SLOTS`` (every second, and at once when a pub/sub
connection is lost, a subscription is refused with ``MOVED``, the server drops a
subscription by itself -- the ``sunsubscribe`` push when a slot leaves a node -- or a publish
is redirected) and keeps a slot -> master table.  Each master gets a command client and one
`pubsub.PubSubLoop` in the sharded dialect, read by its own task; each wanted channel is
routed to the loop of its slot's master.  When the owner changes (failover, slot moved), the
channel is dropped from the old loop and subscribed on the new one; its confirmation is
reported to the hub (`on_subscribed`), which resynchronises its streams from history exactly
as after a reconnect.

Failover honesty (`failover.py`).  Replication is asynchronous: a promoted replica may lack
acknowledged writes and would hand out sequence numbers already given.  Every script call
of a channel (publish, position, history) goes through a guard that compares the channel's
``rid`` (the replication id of the master that last wrote it) with the current master's:
a proven lossless predecessor keeps the epoch (streams catch up exactly), anything else
starts the channel afresh with a new epoch (streams get a ``pushsvc.reset``).  When the
refresher sees a slot's master change, a prover asks the old master whether it rejoined the
new one by a partial resync (the proof), and records the verdict in the moved slots' proof
hashes on the new master, where every caller's script reads it; until then the guard
answers *pending* and calls are retried (bounded), so a planned failover resets nothing.
A slot moved to another master (resharding) is blessed the same way: the prover checks
that the former master is still the one it read (run_id) and records its replication id
on the new master, whose guard then keeps the moved channels' epochs -- when the new master
never took over another master's history (failover.py, "Slot migrations").

Why not redis-py's cluster pub/sub.  ``redis.asyncio.cluster.ClusterPubSub`` keeps one
`PubSub` per node and ``get_sharded_message`` polls them one after another, each with the
caller's timeout, so a slow or failing node delays delivery from every other (redis-py
#4076); it also re-subscribes silently.  And the publish path talks to one node's
connection pool directly rather than through ``RedisCluster``, which follows ``MOVED``/
``ASK`` internally: here a redirect is seen, the topology refreshed, and the call re-sent
(safe: a redirected script did not run, and every call carries its idempotency record).

Raw publishers.  Only ``SPUBLISH <channel> <json>`` reaches ``/stream?channel=<channel>``
(delivered live, without id, like a raw ``PUBLISH`` on a single Redis).  A classic
``PUBLISH`` (flask-sse) is not delivered on a cluster; the start-up log says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, ResponseError, TryAgainError

from ..events import Event
from ..wire import CONTROL_CHANNEL, EMPTY, Position, channel_of_live, history_key, live_channel, meta_key
from . import (
    BrokerUnavailable,
    History,
    Listener,
    OutcomeUnknown,
    Published,
    history_from_replies,
    new_epoch,
    queue_history_reads,
)
from .counting import SubscriberCounter
from .failover import (
    GRACE_SECONDS,
    INFO_LUA,
    PROOF_WINDOW_SECONDS,
    RECORD_MIGRATION_LUA,
    RECORD_PROOF_LUA,
    Replication,
    lossless_successor,
    migration_blessing,
    pristine,
    proof_key,
    proof_key_of_slot,
)
from .pubsub import SHARDED, UNAVAILABLE, PubSubLoop, message_handler, text
from .scripts import (
    POSITION_LUA,
    Call,
    Idempotency,
    cluster_calls_for,
    is_pending,
    max_copies,
    publish_lua,
    read_replies,
)

log = logging.getLogger("pushsvc.redis")

SLOTS = 16384
_READ_ATTEMPTS = 6  # of a read redirected while a slot moves (about 1 s of pauses in all)
PUBLISH_SCRIPT = publish_lua("SPUBLISH", guard_failover=True)
POSITION_SHA = hashlib.sha1(POSITION_LUA.encode("utf-8")).hexdigest()
PENDING_RETRY_SECONDS = 0.02  # a call the guard answered "pending": a verdict takes ~10-150 ms
_REDIRECTS = (MovedError, AskError, TryAgainError, ClusterDownError)
_Item = tuple[int, int, str, Call]  # event index, copy index, channel, script call
_Waiting = tuple[list[_Item], "asyncio.Future[list[Any]]"]  # one request's calls on a shard, and their replies


def slot_of(channel: str) -> int:
    return int(key_slot(channel.encode("utf-8")))


def _names(channel: str) -> tuple[str, ...]:
    return (channel,) if channel == CONTROL_CHANNEL else (channel, live_channel(channel))


def _group_by_slot(names: list[str]) -> list[list[str]]:
    """SSUBSCRIBE takes names of one slot per command."""
    groups: dict[int, list[str]] = {}
    for name in names:
        groups.setdefault(slot_of(channel_of_live(name) or name), []).append(name)
    return list(groups.values())


class _Unsent(Exception):
    """No connection could be had: nothing was sent."""


class ClusterBroker:
    name = "redis-cluster"

    def __init__(
        self,
        seeds: Sequence[str],
        history_size: int = 1000,
        history_ttl_seconds: int = 3600,
        timeout_seconds: float = 2.0,
        max_connections: int = 64,
        ping_interval_seconds: float = 1.0,
        backoff_cap_seconds: float = 2.0,
        refresh_interval_seconds: float = 1.0,
    ) -> None:
        if not seeds:
            raise ValueError("a cluster needs at least one seed URL")
        self.seeds = [self._address(seed) for seed in seeds]
        first = urlsplit(seeds[0])
        self._scheme = first.scheme
        self._userinfo = first.netloc.rsplit("@", 1)[0] + "@" if "@" in first.netloc else ""
        self._query = f"?{first.query}" if first.query else ""  # TLS options (ssl_ca_certs=...) for every node
        self.history_size = history_size
        self.history_ttl_seconds = history_ttl_seconds
        self.timeout = timeout_seconds
        self.max_connections = max_connections
        self.ping_interval = ping_interval_seconds
        self.backoff_cap = backoff_cap_seconds
        self.refresh_interval = refresh_interval_seconds
        self._slots: list[str] = [""] * SLOTS
        self._clients: dict[str, aioredis.Redis] = {}
        self._loops: dict[str, PubSubLoop] = {}
        self._route: dict[str, str] = {}  # wanted channel -> address of the loop holding it
        self._wanted: set[str] = set()
        self._listener: Listener | None = None
        self._refresh_now = asyncio.Event()
        self._refreshed = asyncio.Event()
        self._refresher: asyncio.Task[None] | None = None
        self._topology_error = "topology not read yet"
        self.resubscriptions = 0
        self._moved_in: dict[str, int] = {}
        self._evicted: set[str] = set()  # channels unrouted by a topology change, to place again
        self._past_reconnects = 0  # of shards' loops closed since
        self._past: dict[str, dict[str, int]] = {}  # per shard: counts of its loops closed since
        self._run_ids: dict[str, str] = {}  # master address -> run_id read while it was master
        self._provers: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._proofs: dict[str, dict[str, int]] = {}  # new master -> proven / unproven handovers
        self._proven: dict[str, str] = {}  # new master -> its replication id, once proven and recorded
        self._batches: dict[tuple[str, bool], list[_Waiting]] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        self.max_batch = max_copies(timeout_seconds)
        self._counter = SubscriberCounter(self._publish_control, self._client_for_key, timeout_seconds)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, listener: Listener) -> None:
        self._listener = listener
        self._counter.listener = listener
        self._wanted.add(CONTROL_CHANNEL)
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever(), name="pushsvc-topology")
        log.warning(
            "redis cluster: raw publishers must use SPUBLISH <channel> <json>; a classic PUBLISH "
            "(flask-sse) is not delivered"
        )

    async def stop(self) -> None:
        for flush in list(self._flushes):
            flush.cancel()
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        await self._counter.stop()
        for task in list(self._provers.values()):
            task.cancel()
        await asyncio.gather(*self._provers.values(), return_exceptions=True)
        for address in list(self._loops):
            await self._close_node(address)

    def status(self) -> tuple[bool, str]:
        if not all(self._slots):
            return False, f"redis cluster: not every slot is covered ({self._topology_error})"
        for address in sorted(set(self._slots)):
            loop = self._loops.get(address)
            if loop is None:
                return False, f"redis cluster: no connection to shard {address} yet"
            ok, why = loop.responsive()
            if not ok:
                return False, f"redis cluster: shard {address} {why}"
        return True, f"redis cluster: {len(set(self._slots))} shards, every slot covered, every shard reachable"

    @property
    def reconnects(self) -> int:
        """Pub/sub connections lost and re-established, all shards (``/metrics``)."""
        return self._past_reconnects + sum(loop.reconnects for loop in self._loops.values())

    def shards(self) -> dict[str, dict[str, int]]:
        """Per shard -- every address that was a master while this process ran, so a counter
        never vanishes or goes down when its shard fails over or moves (``rate()`` would
        read that as a reset): messages read, reconnects, channels moved in, failovers to it
        proven lossless or not (/metrics)."""
        figures: dict[str, dict[str, int]] = {}
        for address in sorted({*self._past, *self._loops, *self._moved_in, *self._proofs}):
            past = self._past.get(address, {})
            loop = self._loops.get(address)
            proofs = self._proofs.get(address, {})
            figures[address] = {
                "messages": past.get("messages", 0) + (loop.messages if loop is not None else 0),
                "reconnects": past.get("reconnects", 0) + (loop.reconnects if loop is not None else 0),
                "resubscriptions": self._moved_in.get(address, 0),
                "failovers_proven": proofs.get("proven", 0),
                "failovers_unproven": proofs.get("unproven", 0),
            }
        return figures

    # -- topology --------------------------------------------------------------------------

    @staticmethod
    def _address(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"

    def _url(self, address: str) -> str:
        return f"{self._scheme}://{self._userinfo}{address}{self._query}"

    def _common(self) -> dict[str, Any]:
        return dict(socket_timeout=self.timeout, socket_connect_timeout=self.timeout, retry=Retry(NoBackoff(), 1))

    def _client(self, address: str) -> aioredis.Redis:
        client = self._clients.get(address)
        if client is None:
            pool = BlockingConnectionPool.from_url(
                self._url(address), max_connections=self.max_connections, timeout=self.timeout, **self._common()
            )
            client = self._clients[address] = aioredis.Redis(connection_pool=pool)
        return client

    def _owner(self, channel: str) -> str:
        address = self._slots[slot_of(channel)]
        if not address:
            raise BrokerUnavailable(f"redis cluster: the slot of {channel!r} is not covered")
        return address

    def _client_for_key(self, key: str) -> aioredis.Redis:
        return self._client(self._owner(key))

    def kick(self) -> None:
        """Read the topology again now (something moved)."""
        self._refresh_now.set()

    async def _refresh_forever(self) -> None:
        while True:
            self._refresh_now.clear()
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the refresher must survive anything
                self._topology_error = f"{type(exc).__name__}: {exc}"
                log.warning("redis cluster topology read failed", extra={"error": self._topology_error})
            try:
                async with asyncio.timeout(self.refresh_interval):
                    await self._refresh_now.wait()
            except TimeoutError:
                pass

    async def _read_slots(self) -> list[tuple[int, int, str]]:
        candidates = [a for a in dict.fromkeys([*sorted(set(self._slots) - {""}), *self.seeds])]
        last: Exception | None = None
        for address in candidates:
            client = aioredis.Redis.from_url(self._url(address), protocol=2, **self._common())
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await client.execute_command("CLUSTER", "SLOTS")  # type: ignore[no-untyped-call]
            except UNAVAILABLE as exc:
                last = exc
                continue
            finally:
                await client.aclose()
            host = address.rsplit(":", 1)[0]
            ranges = []
            for entry in reply:
                node_host = text(entry[2][0]) or host
                ranges.append((int(entry[0]), int(entry[1]), f"{node_host}:{int(entry[2][1])}"))
            return ranges
        raise BrokerUnavailable(f"no cluster node answers CLUSTER SLOTS ({last})")

    async def refresh(self) -> None:
        ranges = await self._read_slots()
        table = [""] * SLOTS
        for low, high, address in ranges:
            table[low:high + 1] = [address] * (high - low + 1)
        changed = table != self._slots
        if changed:
            self._start_proofs(self._slots, table)
        self._slots = table
        self._topology_error = "" if all(table) else "some slots have no master"
        masters = set(table) - {""}
        for address in masters - set(self._loops):
            self._open_node(address)
        if changed:
            log.info("redis cluster topology", extra={"masters": ",".join(sorted(masters))})
        for channel in list(self._wanted):
            self._place(channel)
        for address in set(self._loops) - masters:
            await self._close_node(address)
        self._refreshed.set()

    def _open_node(self, address: str) -> None:
        pool = ConnectionPool.from_url(
            self._url(address), protocol=2, client_name="pushsvc-pubsub",
            **{**self._common(), "retry": Retry(NoBackoff(), 0)},
        )
        loop = PubSubLoop(
            pool, label=address, timeout=self.timeout, ping_interval=self.ping_interval,
            backoff_cap=self.backoff_cap, dialect=SHARDED, group=_group_by_slot,
            handler_for=self._handler_for,
            on_confirmed=lambda name, a=address: self._on_confirmed(a, name),  # type: ignore[misc]
            on_evicted=lambda name, a=address: self._on_evicted(a, name),  # type: ignore[misc]
            on_lost=self.kick, on_error_reply=lambda _exc: self.kick(),
        )
        self._loops[address] = loop
        loop.start()
        self._spawn(("identity", address), self._read_identity(address))

    async def _close_node(self, address: str) -> None:
        for channel in [ch for ch, at in self._route.items() if at == address]:
            del self._route[channel]  # placed again by the next refresh
            self._evicted.add(channel)
        loop = self._loops.pop(address, None)
        if loop is not None:
            self._past_reconnects += loop.reconnects + 1  # the shard's connection is gone: a reconnect
            past = self._past.setdefault(address, {"messages": 0, "reconnects": 0})
            past["messages"] += loop.messages
            past["reconnects"] += loop.reconnects + 1
            await loop.stop()
        client = self._clients.pop(address, None)
        if client is not None:
            await client.aclose()
            await client.connection_pool.disconnect()

    # -- failover proofs (failover.py) -------------------------------------------------------

    def _spawn(self, key: tuple[str, str], work: Coroutine[Any, Any, None]) -> None:
        running = self._provers.get(key)
        if running is not None and not running.done():
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work)
        self._provers[key] = task
        task.add_done_callback(lambda done: self._forget(key, done))

    def _forget(self, key: tuple[str, str], task: asyncio.Task[None]) -> None:
        if self._provers.get(key) is task:
            del self._provers[key]

    async def _info(self, address: str) -> Replication:
        """``INFO server replication`` of one node (master or replica), on a connection of its own."""
        client = aioredis.Redis.from_url(self._url(address), protocol=2, **self._common())
        try:
            async with asyncio.timeout(self.timeout):
                raw = await client.eval(INFO_LUA, 0)
        finally:
            await client.aclose()
        return Replication.parse(raw)

    async def _read_identity(self, address: str) -> None:
        """Remember a new master's run_id: only that process may later vouch, as the old
        master of a failover, that it had nothing its successor lacks."""
        try:
            info = await self._info(address)
        except UNAVAILABLE:
            return
        if info.role == "master":  # a stale view may list a demoted node: keep what we knew
            self._run_ids[address] = info.run_id

    def _start_proofs(self, before: list[str], after: list[str]) -> None:
        """Slots whose master changed: try to prove each handover lossless (failover.py)."""
        handovers: dict[tuple[str, str], list[int]] = {}
        for slot, (old, new) in enumerate(zip(before, after, strict=True)):
            if old and new and old != new:
                handovers.setdefault((old, new), []).append(slot)
        masters = set(after)
        for (old, new), slots in handovers.items():
            self._spawn((old, new), self._prove(old, new, slots, migrated=old in masters))

    async def _prove(self, old: str, new: str, slots: list[int], migrated: bool) -> None:
        """Ask the old master, for at most PROOF_WINDOW_SECONDS, whether the new one took over
        without loss; record the verdict in the moved slots' proof hashes on the new master
        (a proven predecessor, or "done" alone: the guard then resets at once instead of
        letting callers wait).  A slot that moved to another master (resharding) is not a
        failover: `_bless_migration` records its verdict."""
        run_id = self._run_ids.get(old, "")
        try:
            successor = await self._info(new)
        except UNAVAILABLE as exc:
            log.warning("redis cluster: new master does not answer", extra={"shard": new, "error": type(exc).__name__})
            return  # nothing can be recorded there; its guard waits out the grace
        if migrated:
            await self._bless_migration(old, new, run_id, successor, slots)
            return
        if successor.role != "master" or self._proven.get(new) == successor.replid:
            return  # not a master (a stale view), or this handover is proven and recorded already
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + PROOF_WINDOW_SECONDS
        proven: str | None = None
        why = "a slot moved to another master" if migrated else "the old master was never seen as master"
        while not migrated and run_id:
            try:
                predecessor = await self._info(old)
            except aioredis.ConnectionError as exc:  # gone (a kill, a crash): it cannot vouch
                why = f"the old master does not answer ({type(exc).__name__})"
                break
            except UNAVAILABLE as exc:
                predecessor, why = None, f"the old master does not answer ({type(exc).__name__})"
            if predecessor is not None:
                proven = lossless_successor(run_id, predecessor, successor)
                if proven is not None:
                    break
                if predecessor.replid == successor.replid:  # it follows the new master after a full sync
                    why = "the old master had writes the new one lacks (it needed a full resync)"
                    break
                why = "the old master has not resynchronised partially with the new one"
            if loop.time() >= deadline:
                break
            await asyncio.sleep(PENDING_RETRY_SECONDS)
        decided = loop.time()
        recorded = await self._record_proof(new, successor.replid, proven or "", slots)
        if proven and recorded:
            self._proven[new] = successor.replid
        timing = {"decided_ms": round(1000 * (decided - started)), "recorded_ms": round(1000 * (loop.time() - decided))}
        counts = self._proofs.setdefault(new, {"proven": 0, "unproven": 0})
        counts["proven" if proven else "unproven"] += 1
        if proven:
            log.info("redis cluster failover proven lossless: channels keep their ids",
                     extra={"old": old, "shard": new, "slots": len(slots), "recorded": recorded, **timing})
        else:
            log.warning("redis cluster master changed without a proof of no loss: its channels start new epochs",
                        extra={"old": old, "shard": new, "slots": len(slots), "why": why, "recorded": recorded,
                               **timing})

    async def _bless_migration(self, old: str, new: str, run_id: str, target: Replication, slots: list[int]) -> None:
        """Slots moved from master `old` to master `new` (resharding): record on `new`, in the
        slots' proof hashes, the replication ids whose stamps its guard may keep (failover.py,
        "Slot migrations"): `old`'s, when `old` is still the master this process read (same
        run_id).  Nothing is recorded while `old` does not answer: the guard waits, then resets."""
        if target.role != "master":
            return  # a stale view
        try:
            source = await self._info(old)
        except UNAVAILABLE as exc:
            log.warning("redis cluster: a slot's former master does not answer", extra={
                "old": old, "shard": new, "error": type(exc).__name__})
            return
        blessed, inherit = migration_blessing(run_id, source)
        if not pristine(target):
            blessed, inherit = "", False  # condition (a): the guard would refuse it anyway; say so at once
        recorded = await self._record(RECORD_MIGRATION_LUA, new, [target.replid, blessed, "1" if inherit else ""],
                                      slots)
        if not blessed:  # counted, as before, with the master changes that reset (/metrics)
            counts = self._proofs.setdefault(new, {"proven": 0, "unproven": 0})
            counts["unproven"] += 1
        extra = {"old": old, "shard": new, "slots": len(slots), "recorded": recorded}
        if blessed:
            log.info("redis cluster slots moved: their channels keep their ids", extra=extra)
        else:
            why = ("the new master took over another master's history (master_replid2 set)" if not pristine(target)
                   else "the former master is not the one this process saw (restarted, demoted, or never seen)")
            log.warning("redis cluster slots moved without a blessing: their channels start new epochs",
                        extra={**extra, "why": why})

    async def _record_proof(self, address: str, replid: str, predecessor: str, slots: list[int]) -> bool:
        return await self._record(RECORD_PROOF_LUA, address, [replid, predecessor], slots)

    async def _record(self, script: str, address: str, head: list[str], slots: list[int]) -> bool:
        """Write the verdict into the slots' proof hashes on the new master: first the slots of
        this process's channels (their publishes and resyncs are waiting), then the rest."""
        mine = {slot_of(channel) for channel in self._wanted}
        ordered = sorted(slots, key=lambda slot: slot not in mine)
        client = self._client(address)
        try:
            async with asyncio.timeout(self.timeout * 4):
                sha = await client.script_load(script)
                first = sum(1 for slot in ordered if slot in mine)
                for chunk in (ordered[:first], *(ordered[i:i + 1000] for i in range(first, len(ordered), 1000))):
                    if chunk:
                        await client.evalsha(sha, 0, *head, *map(proof_key_of_slot, chunk))
        except (ResponseError, *UNAVAILABLE) as exc:  # a slot that moved on meanwhile
            log.warning("redis cluster: could not record a failover verdict", extra={"shard": address,
                                                                                       "error": type(exc).__name__})
            return False
        return True

    def _place(self, channel: str) -> None:
        """Subscribe `channel` on the loop of its slot's master (moving it if needed)."""
        address = self._slots[slot_of(channel)]
        current = self._route.get(channel)
        if address == current or not address or address not in self._loops:
            return
        if current is not None and current in self._loops:
            self._loops[current].drop(_names(channel))
        if current is not None or channel in self._evicted:
            self._evicted.discard(channel)
            self.resubscriptions += 1
            self._moved_in[address] = self._moved_in.get(address, 0) + 1
            log.info("channel moved to another shard", extra={"channel": channel, "shard": address})
        self._route[channel] = address
        self._loops[address].want(_names(channel))

    # -- subscriptions ---------------------------------------------------------------------

    def subscribe(self, channel: str) -> None:
        self._wanted.add(channel)
        address = self._route.get(channel)
        loop = self._loops.get(address) if address is not None else None
        if loop is None:
            self._route.pop(channel, None)
            self._place(channel)
            return
        loop.want(_names(channel))
        if loop.confirmed(_names(channel)):
            asyncio.get_running_loop().call_soon(self._reconfirm, channel)

    def _reconfirm(self, channel: str) -> None:
        address = self._route.get(channel)
        if address is not None and address in self._loops and self._listener is not None:
            if self._loops[address].confirmed(_names(channel)):
                self._listener.on_subscribed(channel)

    def unsubscribe(self, channel: str) -> None:
        if channel == CONTROL_CHANNEL:
            return
        self._wanted.discard(channel)
        self._evicted.discard(channel)
        address = self._route.pop(channel, None)
        if address is not None and address in self._loops:
            self._loops[address].drop(_names(channel))

    def _handler_for(self, name: str) -> Callable[[bytes], None]:
        assert self._listener is not None
        return message_handler(self._listener, self._counter.on_query, name)

    def _on_confirmed(self, address: str, name: str) -> None:
        public = channel_of_live(name) or name
        if public == CONTROL_CHANNEL or self._route.get(public) != address:
            return
        if self._loops[address].confirmed(_names(public)) and self._listener is not None:
            self._listener.on_subscribed(public)

    def _on_evicted(self, address: str, name: str) -> None:
        public = channel_of_live(name) or name
        log.info("redis dropped a sharded subscription (slot moved)", extra={"channel": public, "shard": address})
        if self._route.get(public) == address:
            del self._route[public]
            self._evicted.add(public)
            self._loops[address].drop(_names(public))
        self.kick()

    # -- publishing and reads --------------------------------------------------------------

    async def publish(self, events: Sequence[Event], idempotency: Idempotency | None = None) -> Published:
        """One script call per event copy, on its channel's master; copies on different
        shards go in parallel (one pipeline per shard), a channel's copies keep their order."""
        plans = cluster_calls_for(events, idempotency, self.history_size, self.history_ttl_seconds, new_epoch)
        todo: list[_Item] = [
            (e, c, channel, call) for e, calls in enumerate(plans) for c, (channel, call) in enumerate(calls)
        ]
        replies: dict[tuple[int, int], Any] = {}
        asking: dict[tuple[int, int], str] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GRACE_SECONDS + self.timeout  # a pending failover proof
        redirects = 0
        while True:
            todo, redirected = await self._publish_round(todo, replies, asking)
            if not todo:
                break
            if redirected:
                redirects += 1
                if redirects >= 5:
                    if not replies:  # every call was answered with a redirect: none of them ran
                        raise BrokerUnavailable("redis cluster kept redirecting the publish (a slot is moving)")
                    raise OutcomeUnknown("redis cluster kept redirecting the publish")
                self.kick()
                await asyncio.sleep(0.05 * redirects)
                await self._refresh_quietly()
            elif loop.time() < deadline:  # the shard's master changed: its verdict is coming
                await asyncio.sleep(PENDING_RETRY_SECONDS)
            elif not replies:  # pending calls stored nothing
                raise BrokerUnavailable("redis cluster: no failover verdict in time")
            else:
                raise OutcomeUnknown("redis cluster: no failover verdict in time")
        per_event = []
        for e, calls in enumerate(plans):
            statuses = [replies[(e, c)] for c in range(len(calls))]
            per_event.append(statuses)
        ids: list[list[str]] = []
        replayed = False
        for statuses in per_event:
            event_ids, again = read_replies(statuses)
            ids.append([i for part in event_ids for i in part])
            replayed |= again
        return Published(ids, replayed)

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except (BrokerUnavailable, *UNAVAILABLE):
            pass

    async def _publish_round(
        self, todo: list[_Item], replies: dict[tuple[int, int], Any], asking: dict[tuple[int, int], str]
    ) -> tuple[list[_Item], bool]:
        """Send `todo`; returns the calls to send again (redirected, or pending a failover
        verdict: neither ran) and whether any was redirected."""
        by_node: dict[tuple[str, bool], list[_Item]] = {}
        for item in todo:
            ask_at = asking.pop((item[0], item[1]), "")
            by_node.setdefault((ask_at or self._owner(item[2]), bool(ask_at)), []).append(item)
        nodes = list(by_node)
        results = await asyncio.gather(*(self._batched(a, ask, by_node[(a, ask)]) for a, ask in nodes),
                                       return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            self.kick()
            unsent = all(isinstance(f, _Unsent) for f in failures) and not replies and len(failures) == len(nodes)
            first = failures[0]
            what = f"{type(first).__name__}: {first}" if str(first) else type(first).__name__
            if unsent:
                raise BrokerUnavailable(f"redis publish failed: {what}")
            raise OutcomeUnknown(f"redis did not answer the publish in time ({what})")
        again: list[_Item] = []
        redirected = False
        for address, result in zip(nodes, results, strict=True):
            assert not isinstance(result, BaseException)
            for item, reply in zip(by_node[address], result, strict=True):
                key = (item[0], item[1])
                if isinstance(reply, AskError) and not isinstance(reply, MovedError):
                    asking[key] = f"{reply.host}:{reply.port}"
                    again.append(item)
                    redirected = True
                elif isinstance(reply, (*_REDIRECTS, NoScriptError)):
                    again.append(item)
                    redirected = True
                elif isinstance(reply, ResponseError):
                    raise OutcomeUnknown(f"redis refused the publish: {reply}")
                elif is_pending(reply):  # sent again to the same node (ASKING too, mid-migration)
                    if address[1]:
                        asking[key] = address[0]
                    again.append(item)
                else:
                    replies[key] = reply
        again.sort(key=lambda item: (item[0], item[1]))
        return again, redirected

    async def _batched(self, address: str, ask: bool, items: list[_Item]) -> list[Any]:
        """Run `items` on `address` in one pipeline shared with the other publishes of this
        loop iteration (one round trip per shard for many concurrent requests)."""
        key = (address, ask)
        done: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        batch = self._batches.setdefault(key, [])
        batch.append((items, done))
        if len(batch) == 1:
            asyncio.get_running_loop().call_soon(self._flush, key)
        elif sum(len(i) for i, _ in batch) >= self.max_batch:
            self._flush(key)
        return await done

    def _flush(self, key: tuple[str, bool]) -> None:
        batch = self._batches.pop(key, None)
        if batch:
            task = asyncio.get_running_loop().create_task(self._send_batch(key, batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _send_batch(self, key: tuple[str, bool], batch: list[_Waiting]) -> None:
        try:
            results = await self._run_on(key[0], [item for items, _ in batch for item in items], key[1])
        except BaseException as exc:
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        start = 0
        for items, done in batch:
            if not done.done():
                done.set_result(results[start:start + len(items)])
            start += len(items)

    async def _run_on(self, address: str, items: list[_Item], ask: bool = False) -> list[Any]:
        client = self._client(address)
        script = client.register_script(PUBLISH_SCRIPT)
        sent = False
        try:
            async with asyncio.timeout(self.timeout):
                async with client.pipeline(transaction=False) as pipe:
                    try:
                        pipe.connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
                    except UNAVAILABLE as exc:
                        raise _Unsent(f"{type(exc).__name__}: {exc}") from exc
                    sent = True
                    for _, _, _, (keys, args) in items:
                        if ask:  # the slot is migrating: the key may be asked of its target
                            pipe.execute_command("ASKING")
                        pipe.evalsha(script.sha, len(keys), *keys, *args)
                    results = list(await pipe.execute(raise_on_error=False))
        except UNAVAILABLE:
            if not sent:
                raise _Unsent("timed out") from None
            raise
        if ask:
            results = results[1::2]
        if any(isinstance(r, NoScriptError) for r in results):
            await client.script_load(PUBLISH_SCRIPT)
        return results

    async def _publish_control(self, query: str) -> int:
        client = self._client_for_key(CONTROL_CHANNEL)
        return int(await client.execute_command("SPUBLISH", CONTROL_CHANNEL, query))  # type: ignore[no-untyped-call]

    async def position(self, channel: str) -> Position:
        """The channel's position through the failover guard, then (when this process
        subscribes to it) a barrier on the pub/sub connection of its shard: every message
        published before the read has then been read."""
        (epoch, seq), = await self._guarded_read(channel, None)
        if channel in self._wanted:  # a resync needs the barrier; a history read of a channel
            await self._barrier_of(channel)  # this process does not subscribe to does not
        if epoch is None:
            return EMPTY
        return Position(text(epoch), int(seq or 0))

    async def _guarded_read(self, channel: str, more: Callable[[Any], None] | None) -> list[Any]:
        """The failover guard (`POSITION_LUA`: it may start the channel afresh), then what
        `more` queues, in one transaction on the channel's shard (`_read`: ASK, TRYAGAIN and
        MOVED followed); [(epoch, seq), *replies].  While the guard answers pending (the
        shard's master just changed and its failover verdict is not recorded yet) the read is
        tried again, for at most the guard's grace."""
        def queue(pipe: Any, asking: bool) -> None:
            pipe.evalsha(POSITION_SHA, 2, meta_key(channel), history_key(channel), new_epoch(), proof_key(channel),
                         "1" if asking else "")
            if more is not None:
                more(pipe)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + GRACE_SECONDS + self.timeout
        loaded = False
        while True:
            try:
                replies = await self._read(channel, queue)
            except NoScriptError:
                if loaded:
                    raise BrokerUnavailable("redis cluster: the guard script cannot be loaded") from None
                await self._load_position_script()
                loaded = True
                continue
            guard, *rest = replies
            if not is_pending(guard):
                _status, epoch, seq = guard
                return [(epoch or None, seq), *rest]
            if loop.time() >= deadline:
                raise BrokerUnavailable(f"redis cluster: no failover verdict yet for {channel!r}")
            await asyncio.sleep(PENDING_RETRY_SECONDS)

    async def _load_position_script(self) -> None:
        """Load the guard on every master (a restarted node, or a target mid-migration)."""
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.gather(*(self._client(a).script_load(POSITION_LUA) for a in set(self._slots) - {""}))
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"redis read failed: {type(exc).__name__}") from exc

    async def _barrier_of(self, channel: str) -> None:
        address = self._route.get(channel)
        loop = self._loops.get(address) if address is not None else None
        if loop is None:
            raise BrokerUnavailable(f"redis cluster: {channel!r} is not subscribed on a shard yet")
        try:
            ok = await loop.barrier()
        except TimeoutError:
            raise BrokerUnavailable("redis did not answer a pub/sub barrier") from None
        if not ok:
            raise BrokerUnavailable("the pub/sub connection was lost")

    async def barrier(self) -> None:
        """PING every reachable shard's pub/sub connection.  `position` already waited on the
        channel's own shard; a shard that is down is skipped here (its channels are resynced
        when it is back), so one failing shard never stalls the others' resyncs."""
        loops = [loop for loop in self._loops.values() if loop.connected]
        await asyncio.gather(*(loop.barrier() for loop in loops), return_exceptions=True)

    async def history(self, channel: str, after_seq: int, limit: int | None = None) -> History:
        """Read through the failover guard, like `position`: a channel whose meta a lost
        master wrote is started afresh first, so its old ids are never handed out as current."""
        _guard, *replies = await self._guarded_read(
            channel, lambda pipe: queue_history_reads(pipe, channel, after_seq, limit)
        )
        return history_from_replies(replies)

    async def _read(self, channel: str, queue: Callable[[Any, bool], None]) -> list[Any]:
        """One transaction of reads (`queue(pipe, asking)`) of `channel`'s keys on its slot's
        master (`asking`: of a migration's target).

        While the slot migrates, the source answers ASK for keys that already left it: the
        read is then asked of the target.  The server checks the keys of a whole
        transaction at EXEC: while they are split between the two nodes, the target answers
        TRYAGAIN (so a half-moved channel is never read as one without history).  MOVED,
        TRYAGAIN and CLUSTERDOWN are retried after a topology read; BrokerUnavailable after
        a few attempts (about 1 s) or when a node does not answer."""
        ask_at = ""
        for attempt in range(_READ_ATTEMPTS):
            try:
                async with asyncio.timeout(self.timeout):
                    if ask_at:
                        return await self._transaction(self._client(ask_at), queue, asking=True)
                    return await self._transaction(self._client_for_key(channel), queue, asking=False)
            except AskError as exc:
                if isinstance(exc, MovedError):
                    ask_at = ""
                elif not ask_at:
                    ask_at = f"{exc.host}:{exc.port}"
                    continue
            except TryAgainError:
                pass  # the keys are split between the nodes for a moment: ask the same one again
            except ClusterDownError:
                ask_at = ""
            except NoScriptError:
                raise  # the caller loads its script
            except UNAVAILABLE as exc:
                self.kick()
                raise BrokerUnavailable(f"redis read failed: {type(exc).__name__}") from exc
            self.kick()
            await asyncio.sleep(0.05 * (attempt + 1))
            await self._refresh_quietly()
        raise BrokerUnavailable(f"redis cluster: the slot of {channel!r} is moving; try again")

    @staticmethod
    async def _transaction(client: aioredis.Redis, queue: Callable[[Any, bool], None], asking: bool) -> list[Any]:
        async with client.pipeline(transaction=True) as pipe:
            if asking:  # before MULTI: inside the transaction the flag covers every queued command
                pipe.connection = conn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
                await conn.send_command("ASKING")
                await conn.read_response()
            queue(pipe, asking)
            return list(await pipe.execute())

    async def count_subscribers(self, channel: str, local: int) -> int:
        return await self._counter.count(channel, local)
