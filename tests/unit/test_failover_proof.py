"""The lossless-successor proof (pushsvc.broker.failover), from INFO texts as Redis 7.0
writes them before and after a planned failover (checked on a real cluster in
tests/integration/test_cluster.py)."""

from __future__ import annotations

from redis.crc import key_slot

from pushsvc.broker.failover import (
    SLOTS,
    Replication,
    lossless_successor,
    migration_blessing,
    pristine,
    proof_key,
    proof_key_of_slot,
)

R_OLD = "6539ead9a0114aebb41824487fd5f96145147741"
R_NEW = "a0c3035503771249d6e5cdb08825ef920e576e3c"
NO_ID = "0" * 40


def info(run_id: str, role: str, replid: str, replid2: str, second: int) -> Replication:
    text = (
        f"# Server\r\nredis_version:7.0.15\r\nrun_id:{run_id}\r\n# Replication\r\nrole:{role}\r\n"
        f"master_replid:{replid}\r\nmaster_replid2:{replid2}\r\nmaster_repl_offset:3217\r\n"
        f"second_repl_offset:{second}\r\n"
    )
    return Replication.parse(text.encode())


NEW = info("new-run", "master", R_NEW, R_OLD, 3218)


def test_an_old_master_that_resynchronised_partially_proves_the_handover():
    old = info("old-run", "slave", R_NEW, R_OLD, 3218)
    assert lossless_successor("old-run", old, NEW) == R_OLD


def test_an_old_master_that_needed_a_full_resync_proves_nothing():
    old = info("old-run", "slave", R_NEW, NO_ID, -1)
    assert lossless_successor("old-run", old, NEW) is None


def test_an_old_master_not_yet_demoted_proves_nothing():
    old = info("old-run", "master", R_OLD, NO_ID, -1)
    assert lossless_successor("old-run", old, NEW) is None


def test_a_restarted_old_master_proves_nothing_even_with_matching_ids():
    old = info("another-run", "slave", R_NEW, R_OLD, 3218)
    assert lossless_successor("old-run", old, NEW) is None
    assert lossless_successor("", old, NEW) is None  # never seen as master


def test_a_different_switch_point_proves_nothing():
    old = info("old-run", "slave", R_NEW, R_OLD, 3300)
    assert lossless_successor("old-run", old, NEW) is None


def test_a_new_master_without_a_predecessor_proves_nothing():
    fresh = info("new-run", "master", R_NEW, NO_ID, -1)
    old = info("old-run", "slave", R_NEW, NO_ID, -1)
    assert lossless_successor("old-run", old, fresh) is None


def test_an_id_made_of_digits_is_read_as_text():
    digits = "1" * 40
    assert Replication.parse(f"master_replid:{digits}\r\n").replid == digits


def test_every_slot_has_a_proof_key_in_it():
    for slot in (0, 1, 5461, 12182, SLOTS - 1):
        key = proof_key_of_slot(slot)
        assert key_slot(key.encode()) == slot
    assert key_slot(proof_key("user:42").encode()) == key_slot(b"user:42")


# -- slot migrations: what the prover blesses (condition (b)), from INFO texts ----------------


def test_a_slot_that_left_the_master_this_process_knew_blesses_its_id_and_its_list():
    source = info("src-run", "master", R_OLD, NO_ID, -1)
    assert migration_blessing("src-run", source) == (R_OLD, True)


def test_a_source_that_took_over_another_masters_history_blesses_only_its_own_writes():
    source = info("src-run", "master", R_NEW, R_OLD, 3218)
    assert migration_blessing("src-run", source) == (R_NEW, False)
    assert not pristine(source)


def test_a_restarted_source_blesses_nothing():
    """Another run_id than the one read while it was master: its data may be older than
    what it acknowledged (and Redis 7 gave it a new id anyway)."""
    source = info("restarted-run", "master", R_OLD, NO_ID, -1)
    assert migration_blessing("src-run", source) == ("", False)


def test_a_source_never_seen_as_master_or_demoted_blesses_nothing():
    assert migration_blessing("", info("src-run", "master", R_OLD, NO_ID, -1)) == ("", False)
    assert migration_blessing("src-run", info("src-run", "slave", R_NEW, R_OLD, 3218)) == ("", False)
