-- Create a session, index it under its user, evict the user's oldest sessions beyond the limit.
-- KEYS[1] session hash, KEYS[2] user index
-- ARGV[1] max per user, ARGV[2] session key base, ARGV[3] member, ARGV[4] user id,
-- ARGV[5] idle timeout ms, ARGV[6] absolute timeout ms, ARGV[7] data field count,
-- ARGV[8] data bytes, ARGV[9..] data and metadata field/value pairs (d:<name>, m:<name>)
-- Returns {evicted, created_at, expires_at, absolute_expires_at}.
local now = store_now()
local max = tonumber(ARGV[1])
local base = ARGV[2]
local absolute = now + tonumber(ARGV[6])
local expires = math.min(now + tonumber(ARGV[5]), absolute)
-- Lazy pruning: entries whose session expired leave the index before it is counted. Bounded:
-- every create trims the index to `max`, so it holds at most `max` entries plus the dead ones.
for _, m in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if not live(base .. m, now) then
    redis.call('ZREM', KEYS[2], m)
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], '_u', ARGV[4], '_c', int(now), '_l', int(now), '_e', int(expires),
  '_a', int(absolute), '_i', ARGV[5], '_v', '1', '_n', ARGV[7], '_z', ARGV[8])
if #ARGV >= 9 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 9))
end
redis.call('PEXPIRE', KEYS[1], int(math.max(expires - now, 1)))
redis.call('ZADD', KEYS[2], int(now), ARGV[3])
local evicted = 0
local n = redis.call('ZCARD', KEYS[2])
while n > max do
  -- The oldest, but never the session being created (it can tie on the millisecond).
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 1)
  local victim = oldest[1]
  if victim == ARGV[3] then
    victim = oldest[2]
  end
  redis.call('ZREM', KEYS[2], victim)
  redis.call('DEL', base .. victim)
  evicted = evicted + 1
  n = n - 1
end
extend_index(KEYS[2], expires, now)
return {evicted, now, expires, absolute}
