"""The atomic publish step, shared by the service and `pushsvc.publisher`.

One Lua script per event and channel: bump the channel's sequence, append the event to the
channel's capped history stream under id ``0-<seq>``, refresh the TTLs, and PUBLISH the
same bytes -- so no subscriber can see a live event that history lacks, nor the reverse.
"""

from __future__ import annotations

from typing import Any

PUBLISH_LUA = """
local meta, hist = KEYS[1], KEYS[2]
local maxlen, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', hist)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
end
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local msg = ARGV[2] .. ',"pushsvc":[' .. seq .. ',"' .. epoch .. '"]}'
if maxlen > 0 then
  redis.call('XADD', hist, 'MAXLEN', maxlen, '0-' .. seq, 'm', msg)
  if ttl > 0 then redis.call('EXPIRE', hist, ttl) end
end
if ttl > 0 then redis.call('EXPIRE', meta, ttl) end
redis.call('PUBLISH', ARGV[1], msg)
return {seq, epoch}
"""


def publish_args(
    channel: str, prefix: bytes, history_size: int, history_ttl_seconds: int, epoch: str
) -> tuple[list[str], list[Any]]:
    from . import history_key, meta_key

    return (
        [meta_key(channel), history_key(channel)],
        [channel, prefix, history_size, history_ttl_seconds, epoch],
    )


def position_id(reply: Any) -> str:
    seq, epoch = reply
    if isinstance(epoch, bytes):
        epoch = epoch.decode("ascii")
    return f"{epoch}-{int(seq)}"
