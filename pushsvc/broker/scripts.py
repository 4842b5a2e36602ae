"""The atomic publish step, shared by the service and `pushsvc.publisher`.

One Lua script call per event: check the event's idempotency record (a repeat answers the
ids it got the first time and stores nothing; the same key with another request is refused),
then for each channel of the event bump its sequence, append the message to its capped
history under id ``0-<seq>``, refresh the TTLs and PUBLISH the same bytes on the channel's
internal live channel -- so no subscriber sees a live event that history lacks, nor the
reverse, and a retried call (redis-py re-sends a whole pipeline after a connection error)
never stores twice.  Every call carries a record: the caller's idempotency key, or an
internal token of its own with a short window.

Names and the envelope come from `pushsvc.wire` (the Lua pieces are generated from it).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import wire
from ..events import Event
from ..randomness import token_hex16
from . import failover

INTERNAL_SCOPE = "~"  # internal retry tokens: never a caller's scope (scopes are [a-z0-9:])
INTERNAL_WINDOW_SECONDS = 60
#: Event copies (events x channels) one request may hold per second of the Redis timeout:
#: measured on a 2-core machine under a load average of 8, 10,000 copies took 0.7-1.3 s of
#: Redis time plus up to 2 s in redis-py; 2,500 per second keeps a request well inside it.
COPIES_PER_TIMEOUT_SECOND = 2_500


def max_copies(redis_timeout_seconds: float) -> int:
    """Most event copies (events x channels) in one request (and one pipeline)."""
    return max(100, int(COPIES_PER_TIMEOUT_SECOND * redis_timeout_seconds))

# The cluster's failover guard (`failover.py`): per channel the caller names the proof hash
# of its slot (an argument, not a declared key: it is read only when a channel's master
# changed, and a declared key that may or may not exist would upset the key checks Redis
# makes while a slot migrates -- ASK, TRYAGAIN -- for every call); the script keeps a
# channel's epoch only when its meta was written by this master or a proven lossless
# predecessor, answers PENDING while a proof may still come, and otherwise starts the
# channel afresh (new epoch).
def publish_lua(publish_command: str = "PUBLISH", guard_failover: bool = False) -> str:
    """The publish script: `publish_command` is PUBLISH (single Redis) or SPUBLISH (cluster);
    `guard_failover` adds the failover guard (cluster: ARGV per channel also names the
    slot's proof hash)."""
    return (
        _PUBLISH_LUA.replace("__PUBLISH__", publish_command)
        .replace("__ASTRIDE__", "3" if guard_failover else "2")
        .replace("__GUARD__", _PRE_GUARD_LUA if guard_failover else "")
        .replace("__EPOCH__", "guarded[c]" if guard_failover else "redis.call('HGET', meta, 'epoch')")
        .replace("__RECORD__", failover.RECORD_LUA if guard_failover else "")
    )


# Every channel through the guard before anything is written: a pending one makes the
# whole call answer PENDING (nothing stored, the caller retries).
_PRE_GUARD_LUA = "\n".join([
    failover.REPLID_LUA,
    failover.GUARD_FUNCTION_LUA,
    "local guarded = {}",
    "for c = 0, (#KEYS - 1) / 2 - 1 do",
    "  local epoch = guard(KEYS[2 + 2 * c], ARGV[10 + 3 * c])",
    f"  if epoch == 'pending' then return {{{failover.PENDING}, ''}} end",
    "  guarded[c] = epoch",
    "end",
])

# A channel's state through the guard (cluster), for a resync or a history read: right after
# a failover the new epoch is seen at once, not at the channel's next publish.
# KEYS: meta, history; ARGV: fresh epoch, the slot's proof hash, '1' when the read was asked
# of a migration's target (ASK: the slot still belongs to the source, which can no longer
# write these keys; they are read as they are, the guard acts once the slot is the
# target's, where a migrated channel keeps its epoch when the move is blessed -- failover.py,
# "Slot migrations" -- and starts afresh otherwise).
# Returns {0, epoch or false, seq}, or {PENDING} while a proof may still come.
POSITION_LUA = "\n".join([
    failover.REPLID_LUA,
    failover.GUARD_FUNCTION_LUA,
    "local meta, hist = KEYS[1], KEYS[2]",
    "if ARGV[3] == '1' then",
    "  return {0, redis.call('HGET', meta, 'epoch'), tonumber(redis.call('HGET', meta, 'seq') or 0)}",
    "end",
    "local epoch = guard(meta, ARGV[2])",
    f"if epoch == 'pending' then return {{{failover.PENDING}}} end",
    "if not epoch then",
    "  if not redis.call('HGET', meta, 'epoch') then return {0, false, 0} end",
    "  epoch = ARGV[1]",
    "  redis.call('DEL', hist)",
    "  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)",
    "  " + failover.RECORD_LUA,
    "end",
    "return {0, epoch, tonumber(redis.call('HGET', meta, 'seq') or 0)}",
])

# KEYS: idempotency record, then meta and history per channel.
# ARGV: fingerprint, record field, record ttl, prefix, maxlen, ttl, eid, then live channel
# and fresh epoch (and the slot's proof hash, cluster) per channel.  Returns {status,
# "<id> <id> ..."}: 0 stored, 1 replayed, -1 the record belongs to another request,
# -2 pending (cluster: a failover proof may still come).
_PUBLISH_LUA = f"""
__GUARD__
local idem, fp, n, idem_ttl = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local prefix, maxlen, ttl, eid = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local seen = redis.call('HGET', idem, 'f')
if seen then
  if seen ~= fp then return {{-1, ''}} end
  local done = redis.call('HGET', idem, n)
  if done then return {{1, done}} end
else
  redis.call('HSET', idem, 'f', fp)
  redis.call('EXPIRE', idem, idem_ttl)
end
local ids = {{}}
for c = 0, (#KEYS - 1) / 2 - 1 do
  local meta, hist, j = KEYS[2 + 2 * c], KEYS[3 + 2 * c], 8 + __ASTRIDE__ * c
  local epoch = __EPOCH__
  if not epoch then
    epoch = ARGV[j + 1]
    redis.call('DEL', hist)
    redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
    __RECORD__
  end
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local msg = {wire.lua_seal('prefix', 'seq', 'epoch', 'eid')}
  if maxlen > 0 then
    redis.call('XADD', hist, 'MAXLEN', maxlen, '0-' .. seq, 'm', msg)
    if ttl > 0 then redis.call('EXPIRE', hist, ttl) end
  end
  if ttl > 0 then redis.call('EXPIRE', meta, ttl) end
  redis.call('__PUBLISH__', ARGV[j], msg)
  ids[#ids + 1] = {wire.lua_position('seq', 'epoch')}
end
local joined = table.concat(ids, ' ')
redis.call('HSET', idem, n, joined)
return {{0, joined}}
"""
PUBLISH_LUA = publish_lua()

Call = tuple[list[str], list[Any]]  # one script call: keys, args


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A caller's idempotency key: `key` covers the whole request (None: only the events'
    own ``idempotency_key`` fields), within `scope` (the publishing credential)."""

    scope: str
    key: str | None
    window_seconds: int


class IdempotencyConflict(Exception):
    """The idempotency key was used before for a different request (422)."""


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8") if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:32]


def _event_digest(event: Event, prefix: bytes) -> bytes:
    return ("\n".join(event.channels) + "\n").encode("utf-8") + prefix


def _eid(record: str, field: int) -> str:
    raw = hashlib.sha256(f"{record}#{field}".encode()).digest()[:8]
    return base64.b32encode(raw).decode("ascii").lower().rstrip("=")[:12]


@dataclass(frozen=True, slots=True)
class _Plan:
    """One event's idempotency record (per channel: the record key carries that channel's
    hash tag, so on a cluster each channel's copy can be its own call) and identity."""

    event: Event
    prefix: bytes
    scope: str
    key: str
    field: int
    fingerprint: str
    window: int
    eid: str
    home: str  # the channel whose hash tag holds the record on a single Redis

    def call(
        self, channels: Sequence[str], record_channel: str, history_size: int, history_ttl_seconds: int,
        new_epoch: Any, guarded: bool = False,
    ) -> Call:
        keys = [wire.idempotency_key(record_channel, self.scope, self.key)]
        args: list[Any] = [
            self.fingerprint, self.field, self.window, self.prefix, history_size, history_ttl_seconds, self.eid,
        ]
        for channel in channels:
            keys += [wire.meta_key(channel), wire.history_key(channel)]
            args += [wire.live_channel(channel), new_epoch()]
            if guarded:
                args.append(failover.proof_key(channel))
        return keys, args


def _plans(events: Sequence[Event], idem: Idempotency | None) -> list[_Plan]:
    prefixes = [event.message_prefix() for event in events]
    request_fp = "-"
    if idem is not None and idem.key is not None:
        request_fp = _digest(idem.scope, *(_event_digest(e, p) for e, p in zip(events, prefixes, strict=True)))
    token = token_hex16()
    plans: list[_Plan] = []
    for n, (event, prefix) in enumerate(zip(events, prefixes, strict=True)):
        home = events[0].channels[0]
        if idem is not None and idem.key is not None:
            scope, key, field, fp, window = idem.scope, idem.key, n, request_fp, idem.window_seconds
        elif event.idempotency_key is not None and idem is not None:
            scope, key, field, window = idem.scope, event.idempotency_key, 0, idem.window_seconds
            fp, home = _digest(idem.scope, _event_digest(event, prefix)), event.channels[0]
        else:
            scope, key, field, fp, window = INTERNAL_SCOPE, token, n, "-", INTERNAL_WINDOW_SECONDS
        eid = _eid(wire.idempotency_key(home, scope, key), field) if len(event.channels) > 1 else ""
        plans.append(_Plan(event, prefix, scope, key, field, fp, window, eid, home))
    return plans


def calls_for(
    events: Sequence[Event], idem: Idempotency | None, history_size: int,
    history_ttl_seconds: int, new_epoch: Any,
) -> list[Call]:
    """The script calls of one request, in order (one per event)."""
    if idem is None:
        return _internal_calls(events, history_size, history_ttl_seconds, new_epoch)
    return [
        plan.call(plan.event.channels, plan.home, history_size, history_ttl_seconds, new_epoch)
        for plan in _plans(events, idem)
    ]


def _internal_calls(
    events: Sequence[Event], history_size: int, history_ttl_seconds: int, new_epoch: Any,
) -> list[Call]:
    """`calls_for` without a caller's key (most publishes): what `_Plan.call` gives each
    event then -- the request's internal token, field n -- built without the plans."""
    record = wire.idempotency_key(events[0].channels[0], INTERNAL_SCOPE, token_hex16())
    calls: list[Call] = []
    for n, event in enumerate(events):
        keys = [record]
        args: list[Any] = [
            "-", n, INTERNAL_WINDOW_SECONDS, event.message_prefix(), history_size, history_ttl_seconds,
            _eid(record, n) if len(event.channels) > 1 else "",
        ]
        for channel in event.channels:
            meta, history, live = wire.channel_keys(channel)
            keys += [meta, history]
            args += [live, new_epoch()]
        calls.append((keys, args))
    return calls


def cluster_calls_for(
    events: Sequence[Event], idem: Idempotency | None, history_size: int,
    history_ttl_seconds: int, new_epoch: Any,
) -> list[list[tuple[str, Call]]]:
    """Per event, per channel: (channel, script call) -- one slot per call (Redis Cluster).
    Each copy has its own idempotency record on its channel's slot; `eid` is shared."""
    return [
        [(channel, plan.call((channel,), channel, history_size, history_ttl_seconds, new_epoch, guarded=True))
         for channel in plan.event.channels]
        for plan in _plans(events, idem)
    ]


def is_pending(reply: Any) -> bool:
    """The guarded script answered PENDING (cluster: a failover proof may still come)."""
    return isinstance(reply, (list, tuple)) and bool(reply) and reply[0] == failover.PENDING


def read_replies(replies: Sequence[Any]) -> tuple[list[list[str]], bool]:
    """(ids per event, replayed) from the script's replies; IdempotencyConflict."""
    ids: list[list[str]] = []
    replayed = False
    for status, joined in replies:
        if int(status) < 0:
            raise IdempotencyConflict("the idempotency key was used for a different request")
        replayed |= int(status) == 1
        ids.append(wire.position_ids(joined))
    return ids, replayed


def copies(events: Sequence[Event]) -> int:
    if len(events) == 1:  # most publishes
        return len(events[0].channels)
    return sum(len(event.channels) for event in events)
