"""The failover guard's rule for a migrated channel (pushsvc.broker.failover, "Slot
migrations"), run as the real Lua on real redis-servers: a channel whose meta another
master stamped keeps its epoch on the node it moved to only when (a) that node never took
over another master's history (``master_replid2`` all zeros) and (b) a process recorded the
stamp's master as the slot's blessed former master.  Standalone servers, not a cluster: the
guard reads only the node's INFO and the channel's and proof hash's keys, and a standalone
server is made to take over another's history (``REPLICAOF`` then ``REPLICAOF NO ONE``) in a
fraction of a second, deterministically.  The end-to-end case (a real ``redis-cli --cluster
reshard``) is in test_cluster_topology.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from pushsvc.broker.failover import RECORD_MIGRATION_LUA, RECORD_PROOF_LUA
from pushsvc.broker.scripts import POSITION_LUA
from tests.support.procs import RedisServer, wait_until

pytestmark = pytest.mark.redis

META, HIST, PROOF = "pushsvc:{ch}:meta", "pushsvc:{ch}:history", "pushsvc:{~0}:failover"
SOURCE = "a" * 40  # the replication id of the master the channel moved from
OTHER = "b" * 40  # another master's
EPOCH, FRESH = "oldepoch", "newepoch"


def replid(node: redis.Redis, field: str = "master_replid") -> str:
    text = node.eval("return redis.call('INFO', 'replication')", 0).decode()  # raw: ids stay strings
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(field + ":"))


@pytest.fixture
def node(private_redis: RedisServer) -> Iterator[redis.Redis]:
    """A master that never took over another master's history."""
    with private_redis.client() as client:
        assert replid(client, "master_replid2") == "0" * 40
        yield client


@pytest.fixture
def promoted(private_redis: RedisServer) -> Iterator[redis.Redis]:
    """A master that took over another master's history: a replica of `private_redis`,
    then promoted (its ``master_replid2`` is the former master's id)."""
    replica = RedisServer()
    replica.start()
    try:
        with replica.client() as client:
            client.execute_command("REPLICAOF", "127.0.0.1", private_redis.port)
            wait_until(lambda: replid(client, "master_link_status") == "up", 10, 0.05, "the replica in sync")
            client.execute_command("REPLICAOF", "NO", "ONE")
            assert replid(client, "master_replid2") != "0" * 40
            yield client
    finally:
        replica.stop()


def arrived(node: redis.Redis, stamp: str = SOURCE) -> None:
    """A channel as a migration leaves it on `node`: its meta stamped by another master."""
    node.hset(META, mapping={"epoch": EPOCH, "seq": 7, "rid": stamp})
    node.xadd(HIST, {"m": "x"}, id="0-7")


def record(node: redis.Redis, blessed: str, inherit: bool = False) -> None:
    assert node.eval(RECORD_MIGRATION_LUA, 0, replid(node), blessed, "1" if inherit else "", PROOF) == 1


def position(node: redis.Redis) -> list:
    return node.eval(POSITION_LUA, 2, META, HIST, FRESH, PROOF, "")


def test_a_blessed_migration_to_a_node_that_never_took_over_history_keeps_the_epoch(node):
    arrived(node)
    record(node, SOURCE)
    assert position(node) == [0, EPOCH.encode(), 7]
    assert node.hget(META, "rid") == replid(node).encode()  # stamped by its new master
    assert node.xlen(HIST) == 1


def test_a_migration_to_a_node_that_took_over_another_masters_history_starts_afresh(promoted):
    """Condition (a): such a node may hold a stale copy stamped with the same id."""
    arrived(promoted)
    record(promoted, SOURCE)  # even with the blessing recorded
    assert position(promoted) == [0, FRESH.encode(), 0]
    assert promoted.xlen(HIST) == 0


def test_a_migration_without_a_blessing_starts_afresh_at_once(node):
    """Condition (b): the recorded verdict names no former master (restarted, demoted, or
    unknown to the process that saw the move)."""
    arrived(node)
    record(node, "")
    assert position(node) == [0, FRESH.encode(), 0]


def test_a_stamp_of_another_master_than_the_blessed_one_starts_afresh(node):
    arrived(node, stamp=OTHER)
    record(node, SOURCE)
    assert position(node) == [0, FRESH.encode(), 0]


def test_before_any_verdict_the_guard_answers_pending(node):
    arrived(node)
    assert position(node)[0] == -2
    record(node, SOURCE)
    assert position(node) == [0, EPOCH.encode(), 7]


def test_a_channel_that_moved_twice_untouched_keeps_its_epoch_only_through_an_untainted_source(node):
    """The source's own list of accepted stamps (``mig:<source>``) is inherited only when
    the source passed condition (a) itself."""
    node.hset(PROOF, "mig:" + SOURCE, OTHER)  # the source had accepted OTHER's stamps
    arrived(node, stamp=OTHER)
    record(node, SOURCE, inherit=False)
    assert position(node) == [0, FRESH.encode(), 0]

    node.delete(META, HIST, PROOF)
    node.hset(PROOF, "mig:" + SOURCE, OTHER)
    arrived(node, stamp=OTHER)
    record(node, SOURCE, inherit=True)
    assert position(node) == [0, EPOCH.encode(), 7]


def test_a_failover_verdict_recorded_later_forgets_the_migration_list(node):
    """A failover proof rewrites the slot's hash: what it said of an earlier master no
    longer blesses an untouched migrated copy."""
    arrived(node)
    record(node, SOURCE)
    node.eval(RECORD_PROOF_LUA, 0, replid(node), "", PROOF)
    assert node.hget(PROOF, "mig:" + replid(node)) is None


def test_a_second_recorder_of_the_same_arrival_changes_nothing(node):
    record(node, SOURCE)
    before = node.hgetall(PROOF)
    record(node, SOURCE)
    assert node.hgetall(PROOF) == before
