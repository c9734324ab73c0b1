-- Move a live session to a new key in one step: the old id is dead the moment this returns.
-- Both keys carry the user's hash tag, so RENAME stays within one Cluster slot; it keeps the TTL.
-- KEYS[1] old session hash, KEYS[2] new session hash, KEYS[3] user index
-- ARGV[1] old member, ARGV[2] new member
-- Returns the hash under its new key, or nil when the old session is absent or expired.
local now = store_now()
if not live(KEYS[1], now) then
  return false
end
redis.call('RENAME', KEYS[1], KEYS[2])
local meta = redis.call('HMGET', KEYS[2], '_c', '_e')
redis.call('ZADD', KEYS[3], meta[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[1])
-- The index may have been created anew (ZREM of its only member deletes it): give it its TTL.
extend_index(KEYS[3], tonumber(meta[2]), now)
return redis.call('HGETALL', KEYS[2])
