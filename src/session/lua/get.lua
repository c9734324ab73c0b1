-- Read a live session, optionally sliding its idle expiry.
-- KEYS[1] session hash, KEYS[2] user index; ARGV[1] touch ('1' or '0')
-- Returns the hash as a flat field/value array, or nil when absent or expired.
local now = store_now()
if not live(KEYS[1], now) then
  return false
end
if ARGV[1] == '1' then
  extend_index(KEYS[2], touch(KEYS[1], now), now)
end
return redis.call('HGETALL', KEYS[1])
