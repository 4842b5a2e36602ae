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

REPLID_LUA = "local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%w+)')"

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
    "  local key, words, seen = ARGV[i], {}, {}",
    "  local function add(list)",
    "    for word in string.gmatch(list or '', '%w+') do",
    f"      if not seen[word] and #words < {MAX_CHAIN} then seen[word] = true; words[#words + 1] = word end",
    "    end",
    "  end",
    "  add(ARGV[2])",
    "  if ARGV[2] ~= '' then add(redis.call('HGET', key, 'ok:' .. ARGV[2])) end",
    "  add(redis.call('HGET', key, 'ok:' .. replid))",
    "  redis.call('DEL', key)",
    "  if #words > 0 then redis.call('HSET', key, 'ok:' .. replid, table.concat(words, ' ')) end",
    "  redis.call('HSET', key, 'done:' .. replid, '1')",
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


NO_ID = "0" * 40


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
