-- Move a live session to a new key in one step: the old id is dead the moment this returns.
-- Both keys carry the user's hash tag, so RENAME stays within one Cluster slot; it keeps the TTL.
-- KEYS[1] old session hash, KEYS[2] new session hash, KEYS[3] user index
-- ARGV[1] now, ARGV[2] old member, ARGV[3] new member
-- Returns the hash under its new key, or nil when the old session is absent or expired.
local now = tonumber(ARGV[1])
if not live(KEYS[1], now) then
  return false
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[3], redis.call('HGET', KEYS[2], '_c'), ARGV[3])
return redis.call('HGETALL', KEYS[2])
