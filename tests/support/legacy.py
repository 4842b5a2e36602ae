"""What the previous release wrote to Redis, for upgrade tests and benches."""

from __future__ import annotations

#: pushsvc.publisher's publish script before the internal live channel (README: Upgrades):
#: KEYS meta, history; ARGV channel, prefix, maxlen, ttl, epoch; PUBLISHes on the public name.
OLD_PUBLISH_LUA = """
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
