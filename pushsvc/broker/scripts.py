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
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import wire
from ..events import Event

INTERNAL_SCOPE = "~"  # internal retry tokens: never a caller's scope (scopes are [a-z0-9:])
INTERNAL_WINDOW_SECONDS = 60
#: Event copies (events x channels) one request may hold per second of the Redis timeout:
#: measured on a 2-core machine under a load average of 8, 10,000 copies took 0.7-1.3 s of
#: Redis time plus up to 2 s in redis-py; 2,500 per second keeps a request well inside it.
COPIES_PER_TIMEOUT_SECOND = 2_500


def max_copies(redis_timeout_seconds: float) -> int:
    """Most event copies (events x channels) in one request (and one pipeline)."""
    return max(100, int(COPIES_PER_TIMEOUT_SECOND * redis_timeout_seconds))

# KEYS: idempotency record, then meta and history per channel.
# ARGV: fingerprint, record field, record ttl, prefix, maxlen, ttl, eid, then live channel
# and fresh epoch per channel.  Returns {status, "<id> <id> ..."}: 0 stored, 1 replayed,
# -1 the record belongs to another request.
PUBLISH_LUA = f"""
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
for i = 2, #KEYS, 2 do
  local meta, hist, j = KEYS[i], KEYS[i + 1], i + 6
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = ARGV[j + 1]
    redis.call('DEL', hist)
    redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
  end
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local msg = {wire.lua_seal('prefix', 'seq', 'epoch', 'eid')}
  if maxlen > 0 then
    redis.call('XADD', hist, 'MAXLEN', maxlen, '0-' .. seq, 'm', msg)
    if ttl > 0 then redis.call('EXPIRE', hist, ttl) end
  end
  if ttl > 0 then redis.call('EXPIRE', meta, ttl) end
  redis.call('PUBLISH', ARGV[j], msg)
  ids[#ids + 1] = {wire.lua_position('seq', 'epoch')}
end
local joined = table.concat(ids, ' ')
redis.call('HSET', idem, n, joined)
return {{0, joined}}
"""

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


def calls_for(
    events: Sequence[Event], idem: Idempotency | None, history_size: int,
    history_ttl_seconds: int, new_epoch: Any,
) -> list[Call]:
    """The script calls of one request, in order (one per event)."""
    prefixes = [event.message_prefix() for event in events]
    request_record: str | None = None
    request_fp = "-"
    if idem is not None and idem.key is not None:
        request_record = wire.idempotency_key(events[0].channels[0], idem.scope, idem.key)
        request_fp = _digest(idem.scope, *(_event_digest(e, p) for e, p in zip(events, prefixes, strict=True)))
    token = secrets.token_hex(8)
    internal_record = wire.idempotency_key(events[0].channels[0], INTERNAL_SCOPE, token)
    calls: list[Call] = []
    for n, (event, prefix) in enumerate(zip(events, prefixes, strict=True)):
        if request_record is not None and idem is not None:
            record, field, fp, window = request_record, n, request_fp, idem.window_seconds
        elif event.idempotency_key is not None and idem is not None:
            record = wire.idempotency_key(event.channels[0], idem.scope, event.idempotency_key)
            field, window = 0, idem.window_seconds
            fp = _digest(idem.scope, _event_digest(event, prefix))
        else:
            record, field, fp, window = internal_record, n, "-", INTERNAL_WINDOW_SECONDS
        eid = _eid(record, field) if len(event.channels) > 1 else ""
        keys = [record]
        args: list[Any] = [fp, field, window, prefix, history_size, history_ttl_seconds, eid]
        for channel in event.channels:
            keys += [wire.meta_key(channel), wire.history_key(channel)]
            args += [wire.live_channel(channel), new_epoch()]
        calls.append((keys, args))
    return calls


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
    return sum(len(event.channels) for event in events)
