"""Redis Cluster failover honesty: the guard every script call of a channel goes through,
and the proof that lets a *lossless* failover keep the channel's epoch.

The guard.  A channel's meta records the replication id of the master that last wrote it
(``rid``).  A call that finds another master's id (a promoted replica, a restarted master)
must not simply continue the channel's sequence: the old master may have handed out
sequence numbers the new one never received, and reusing them would let a client's id
match events written after the loss.  So the guard keeps the epoch only when ``rid`` is a
*proven lossless predecessor* of the current master; otherwise the channel starts afresh
with a new epoch (streams get a ``pushsvc.reset``).

Where the proof is kept.  Proofs are written into the shard itself, one small hash per
slot, ``pushsvc:{~<n>}:failover`` (``~<n>`` is a hash tag chosen to fall in the slot; ``~``
never appears in a channel name), so every caller of the script -- every pushsvc process,
`pushsvc.publisher` in a backend -- reads the same verdict with the channel's own keys:

* ``ok:<replid>`` -- the replication ids proven to be lossless predecessors of the master
  whose id is ``<replid>`` (a chain over successive planned failovers);
* ``done:<replid>`` -- a proof attempt for that master has finished: anything not listed is
  reset at once.

Until a proof attempt has finished, a call that meets an unproven predecessor answers
*pending* (nothing is stored; callers retry) for at most `GRACE_SECONDS` from the first
such call on the channel (the meta's ``wait`` field), after which the guard resets: no
pushsvc process noticed the failover, so nobody will prove it (conservative).

The proof (`lossless_successor`).  Only the old master can tell whether it had writes its
replica never received.  After a planned ``CLUSTER FAILOVER`` the old master becomes a
replica of the new one and partially resynchronises (``PSYNC`` ``+CONTINUE``): it then
reports ``master_replid2`` = its own former id and ``second_repl_offset`` = its offset + 1
at the switch, and the new master reports the same pair (set when it was promoted).  Redis
accepts that ``PSYNC`` only when the old master's offset is not beyond the promotion point
(replication.c, ``masterTryPartialResynchronization``), so equal pairs prove the new master
holds every write the old one ever made under that id.  Had it made more, ``PSYNC`` fails,
a full sync follows and clears ``master_replid2`` (``clearReplicationId2``); after a
``kill -9`` the old master cannot be asked at all.  The old master's ``run_id`` must be the
one recorded while it was master, so a restarted process (whose data may be older than what
it acknowledged) never vouches for writes it no longer remembers.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.crc import key_slot

SLOTS = 16384
#: How long the guard answers "pending" for an unproven predecessor before it resets.
GRACE_SECONDS = 5.0
#: How long a process that saw a master change keeps asking the old master for its proof.
PROOF_WINDOW_SECONDS = 2.0
#: Most predecessors kept per master (a chain of planned failovers).
MAX_CHAIN = 16

PENDING = -2  # the status a guarded script answers while a proof may still come

_tags: list[str] = []


def _slot_tags() -> list[str]:
    """For every slot, a short hash tag (``~<n>``) that falls in it (computed once)."""
    if not _tags:
        table = [""] * SLOTS
        left, n = SLOTS, 0
        while left:
            tag = f"~{n}"
            slot = key_slot(tag.encode("ascii"))
            if not table[slot]:
                table[slot] = tag
                left -= 1
            n += 1
        _tags.extend(table)
    return _tags


def proof_key_of_slot(slot: int) -> str:
    return f"pushsvc:{{{_slot_tags()[slot]}}}:failover"


def proof_key(channel: str) -> str:
    """The proof hash of `channel`'s slot (same slot as the channel's keys)."""
    return proof_key_of_slot(int(key_slot(channel.encode("utf-8"))))


# -- the Lua pieces ----------------------------------------------------------------------

NO_ID = "0" * 40

# The node's replication id and its second one (all zeros on a node that never took over
# another master's history: never promoted from replica, never restarted from an RDB file
# that carried a replication id).
REPLID_LUA = "\n".join([
    "local replinfo = redis.call('INFO', 'replication')",
    "local replid = string.match(replinfo, 'master_replid:(%w+)')",
    "local replid2 = string.match(replinfo, 'master_replid2:(%w+)')",
])

# Slot migrations (resharding).  A channel whose slot moved from master S (replication id
# X) to master T arrives with ``rid`` = X.  Its keys are S's authoritative state: MIGRATE
# copies them key by key and deletes them on S only once T has them, S can no longer write
# them (it answers ASK), and the script, whose keys are all the channel's, is answered
# TRYAGAIN until all of them are on T.  So T may keep the epoch -- provided the copy it
# holds is that latest state, not an older one.  The guard accepts a foreign ``rid`` listed
# in ``mig:<T's id>`` of the slot's proof hash only when
#   (a) T has never taken over another master's history: its ``master_replid2`` is all
#       zeros.  A promoted replica (lossless or not) and a master restarted from an RDB
#       file (Redis 7 keeps the old id as id2) have it set; such a node may hold *stale*
#       copies of the slot's keys -- e.g. T's replica missed the DEL of a channel that left
#       T and came back, then was promoted lossily: its copy is older than the one S went on
#       writing, yet stamped with the same X.  On such a node a migrated channel starts
#       afresh, as before;
#   (b) a pushsvc process recorded the list for this arrival (`migration_blessing`): it saw
#       the slot go from S to T, and S is still a master with the run_id the process read
#       while S was master and the replication id X it blesses (a restarted S has a new id
#       and a new run_id; a demoted S is not a master).  Only X (S's own writes) is blessed,
#       plus -- when S itself satisfies (a) -- the ids S had accepted the same way
#       (``mig:X``: a channel that moved twice without being touched).  A slot that came
#       from a node failing (a) or (b) gets ``done`` alone: its foreign stamps reset at once.
# The list is written into the slot's proof hash on T, as a failover verdict, so every
# caller (services, `pushsvc.publisher`) reads the same one; until it is there the guard
# answers pending (at most GRACE_SECONDS, then it resets: no process saw the move).
# Not covered (as before this change, and independent of it): a stale copy stamped with
# S's *own* id that returns to S itself is taken as S's own -- it needs a lossy failover of
# a node whose replica missed a departure of the slot and its return, the channel untouched
# there, then a move back to S (docs/redis.md, "What is not covered").
# guard(meta, proof) -> epoch (kept), false (none, or must start afresh), or 'pending'.
# The guard only reads the proof hash (a key it created could collide with the slot's own
# proof hash when a resharding MIGRATEs it in: BUSYKEY); the wait starts in the meta.
GUARD_FUNCTION_LUA = f"""
local function guard(meta, proof)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then return false end
  local rid = redis.call('HGET', meta, 'rid')
  if rid == replid then return epoch end
  if rid then
    local ok = redis.call('HGET', proof, 'ok:' .. replid)
    if not (ok and string.find(' ' .. ok .. ' ', ' ' .. rid .. ' ', 1, true)) and replid2 == '{NO_ID}' then
      ok = redis.call('HGET', proof, 'mig:' .. replid)
    end
    if ok and string.find(' ' .. ok .. ' ', ' ' .. rid .. ' ', 1, true) then
      redis.call('HSET', meta, 'rid', replid)
      redis.call('HDEL', meta, 'wait')
      return epoch
    end
  end
  if redis.call('HEXISTS', proof, 'done:' .. replid) == 1 then return false end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local waited = redis.call('HGET', meta, 'wait') or ''
  local since = tonumber(string.match(waited, '^' .. replid .. ':(.+)$') or '')
  if not since then
    redis.call('HSET', meta, 'wait', replid .. ':' .. tostring(now))
    since = now
  end
  if now - since >= {GRACE_SECONDS} then return false end
  return 'pending'
end
"""

RECORD_LUA = "redis.call('HSET', meta, 'rid', replid); redis.call('HDEL', meta, 'wait')"

# A list of replication ids being built (``words``, at most MAX_CHAIN, each once): ``add``
# appends the ids of a space-separated list.  Shared by the two recording scripts below.
_CHAIN_LUA = "\n".join([
    "local words, seen = {}, {}",
    "local function add(list)",
    "  for word in string.gmatch(list or '', '%w+') do",
    f"    if not seen[word] and #words < {MAX_CHAIN} then seen[word] = true; words[#words + 1] = word end",
    "  end",
    "end",
])


# KEYS: none.  ARGV: the master's replication id (the script does nothing on a node with
# another id), a proven predecessor's id or '', then proof hashes of slots of this node, any
# number (passed as arguments: declared keys of several slots are refused with CROSSSLOT,
# while the flag lets the script itself touch keys of any slot the node holds, so a
# failover's 5,461 slots take a handful of calls).  Per hash: records the proof (the
# predecessor and its own proven predecessors, from the same hash) and marks it done.
RECORD_PROOF_LUA = "\n".join([
    "#!lua flags=allow-cross-slot-keys",
    REPLID_LUA,
    "if replid ~= ARGV[1] then return 0 end",
    "for i = 3, #ARGV do",
    "  local key = ARGV[i]",
    _CHAIN_LUA,
    "  add(ARGV[2])",
    "  if ARGV[2] ~= '' then add(redis.call('HGET', key, 'ok:' .. ARGV[2])) end",
    "  add(redis.call('HGET', key, 'ok:' .. replid))",
    "  redis.call('DEL', key)",
    "  if #words > 0 then redis.call('HSET', key, 'ok:' .. replid, table.concat(words, ' ')) end",
    "  redis.call('HSET', key, 'done:' .. replid, '1')",
    "end",
    "return 1",
])


# KEYS: none.  ARGV: the new master's replication id (nothing done on a node with another
# id), the migration source's id ('' when it is not blessed), then proof hashes of slots
# of this node.  Per hash: ``mig:<id>`` lists the source's id and (ARGV[3]: the source
# had list ``mig:<source id>``, inherited when the source passed condition (a)), ``from:``
# the source, ``done:`` the verdict.  The hash is otherwise emptied: what it said of other
# nodes' ids was true of an earlier stay of the slot.  A second recorder of the same
# arrival (several processes saw it) changes nothing.
RECORD_MIGRATION_LUA = "\n".join([
    "#!lua flags=allow-cross-slot-keys",
    REPLID_LUA,
    "if replid ~= ARGV[1] then return 0 end",
    "for i = 4, #ARGV do",
    "  local key = ARGV[i]",
    "  local done = redis.call('HEXISTS', key, 'done:' .. replid) == 1",
    "  if not (done and redis.call('HGET', key, 'from:' .. replid) == ARGV[2]) then",
    _CHAIN_LUA,
    "    add(ARGV[2])",
    "    if ARGV[2] ~= '' and ARGV[3] == '1' then add(redis.call('HGET', key, 'mig:' .. ARGV[2])) end",
    "    redis.call('DEL', key)",
    "    if #words > 0 then redis.call('HSET', key, 'mig:' .. replid, table.concat(words, ' ')) end",
    "    redis.call('HSET', key, 'from:' .. replid, ARGV[2], 'done:' .. replid, '1')",
    "  end",
    "end",
    "return 1",
])


# -- the proof ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replication:
    """What ``INFO server`` + ``INFO replication`` say about one node."""

    run_id: str
    role: str
    replid: str
    replid2: str
    second_offset: int

    @classmethod
    def parse(cls, text: str | bytes) -> Replication:
        """From the raw text of ``INFO server replication`` (raw: redis-py's parser would
        turn an id made only of digits into a number)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        info = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        try:
            second = int(info.get("second_repl_offset", "-1"))
        except ValueError:
            second = -1
        return cls(
            run_id=info.get("run_id", ""),
            role=info.get("role", ""),
            replid=info.get("master_replid", ""),
            replid2=info.get("master_replid2", ""),
            second_offset=second,
        )


#: Read-only: answers the raw INFO text on any node, master or replica.
INFO_LUA = "#!lua flags=no-writes\nreturn redis.call('INFO', 'server', 'replication')"


def lossless_successor(old_run_id: str, old: Replication, new: Replication) -> str | None:
    """The replication id the new master took over losslessly from the old one, or None
    when this is not (or not yet) proven.  `old_run_id` is the old master's ``run_id``
    recorded while it was master."""
    predecessor = new.replid2
    if new.role != "master" or predecessor in ("", NO_ID) or new.second_offset < 0:
        return None
    if not old_run_id or old.run_id != old_run_id:
        return None  # restarted (or never seen as master): its word is worth nothing
    if old.role != "slave" or old.replid != new.replid:
        return None  # not (yet) following the new master's history
    if old.replid2 != predecessor or old.second_offset != new.second_offset:
        return None  # full sync (id2 cleared) or a different switch point
    return predecessor


def pristine(node: Replication) -> bool:
    """Condition (a): the node never took over another master's history (no second id)."""
    return node.replid2 in ("", NO_ID)


def migration_blessing(source_run_id: str, source: Replication) -> tuple[str, bool]:
    """Condition (b), for a slot that moved from `source` to another master: the source's
    replication id to bless on the target ('' when the source is not the master this
    process read as `source_run_id`), and whether the source's own migration list may be
    inherited (it passes condition (a))."""
    if not source_run_id or source.run_id != source_run_id or source.role != "master" or not source.replid:
        return "", False
    return source.replid, pristine(source)
