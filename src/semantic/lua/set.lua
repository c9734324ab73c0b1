-- Stores one semantic cache entry (after clock.lua).
-- KEYS[1] the namespace's index (a sorted set: entry id by expiry, store-clock ms), KEYS[2] its id
-- counter, KEYS[3] its change log (a stream every replica reads to keep its search index
-- current), KEYS[4] the entries' base key (`<base><id>` is an entry hash: v the vector, d the
-- value, m the labels); all in one slot (the namespace's hash tag).
-- ARGV[1] the vector (little-endian f32s), ARGV[2] the value, ARGV[3] the labels (JSON),
-- ARGV[4] TTL ms, ARGV[5] most live entries, ARGV[6] log length.
-- Expired entries (up to 64 per call) go first, then, at the limit, those closest to expiry;
-- each removal and the new entry are logged. Returns {id, evicted}.
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
local over = redis.call('ZCARD', index) + 1 - max_entries
if over > 0 then
  for _, id in ipairs(redis.call('ZRANGE', index, 0, over - 1)) do
    drop(id)
    evicted = evicted + 1
  end
end

local id = redis.call('INCR', counter)
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
return {id, evicted}
