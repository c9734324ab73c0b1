-- Stores one semantic cache entry (after clock.lua).
-- KEYS[1] the namespace's index (a sorted set: entry id by expiry, store-clock ms), KEYS[2] its id
-- counter, KEYS[3] its change log (a stream every replica reads to keep its search index
-- current), KEYS[4] the entries' base key (`<base><id>` is an entry hash: v the vector, d the
-- value, m the labels); all in one slot (the namespace's hash tag).
-- ARGV[1] the vector (little-endian f32s), ARGV[2] the value, ARGV[3] the labels (JSON),
-- ARGV[4] TTL ms, ARGV[5] most live entries, ARGV[6] log length.
-- Expired entries (up to 64 per call) go first, then, at the limit, those closest to expiry (up
-- to 65 per call, so lowering max_entries converges over a few Sets instead of one long
-- script); each removal and the new entry are logged. A new counter starts at the store's
-- clock in µs, so ids are not reused after a namespace expired or was flushed (a replica that
-- has not heard yet must never take a new entry for an old one). Returns {id, evicted}.
local now = store_now()
local index, counter, log, base = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl, max_entries, log_length = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]

local function drop(id)
  redis.call('UNLINK', base .. id)
  redis.call('ZREM', index, id)
  redis.call('XADD', log, 'MAXLEN', '~', log_length, '*', 'o', '-', 'i', id)
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 64)) do
  drop(id)
end
local evicted = 0
local over = math.min(redis.call('ZCARD', index) + 1 - max_entries, 65)
if over > 0 then
  for _, id in ipairs(redis.call('ZRANGE', index, 0, over - 1)) do
    drop(id)
    evicted = evicted + 1
  end
end

if redis.call('EXISTS', counter) == 0 then
  redis.call('SET', counter, int(now * 1000))
end
-- As a string: ids pass 2^31, and Lua would write a large number as 1.7e+15.
local id = int(redis.call('INCR', counter))
local key = base .. id
redis.call('HSET', key, 'v', ARGV[1], 'd', ARGV[2], 'm', ARGV[3])
redis.call('PEXPIRE', key, ttl)
redis.call('ZADD', index, now + ttl, id)
redis.call('XADD', log, 'MAXLEN', '~', log_length, '*', 'o', '+', 'i', id, 'v', ARGV[1])
-- The bookkeeping lives as long as its longest-lived entry.
for _, k in ipairs({index, counter, log}) do
  if redis.call('PTTL', k) < ttl then
    redis.call('PEXPIRE', k, ttl)
  end
end
return {tonumber(id), evicted}
