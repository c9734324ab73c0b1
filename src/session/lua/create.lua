-- Create a session, index it under its user, evict the user's oldest sessions beyond the limit.
-- KEYS[1] session hash, KEYS[2] user index
-- ARGV[1] now, ARGV[2] max per user, ARGV[3] session key base, ARGV[4] member,
-- ARGV[5] created_at, ARGV[6] expires_at, ARGV[7..] hash field/value pairs
-- Returns the number of sessions evicted.
local now = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local base = ARGV[3]
-- Lazy pruning: entries whose session expired leave the index before it is counted. Bounded:
-- every create trims the index to `max`, so it holds at most `max` entries plus the dead ones.
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if not live(base .. m, now) then
    redis.call('ZREM', KEYS[2], m)
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 7))
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
local evicted = 0
local n = redis.call('ZCARD', KEYS[2])
while n > max do
  -- The oldest, but never the session being created (it can tie on the millisecond).
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 1)
  local victim = oldest[1]
  if victim == ARGV[4] then
    victim = oldest[2]
  end
  redis.call('ZREM', KEYS[2], victim)
  redis.call('DEL', base .. victim)
  evicted = evicted + 1
  n = n - 1
end
extend_index(KEYS[2], tonumber(ARGV[6]), now)
return evicted
