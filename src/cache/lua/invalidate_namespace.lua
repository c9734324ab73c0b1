-- Start a new generation of a cache namespace, atomically with its TTL.
-- KEYS[1] generation counter; ARGV[1] now (ms), ARGV[2] TTL ms
-- The new generation is max(current + 1, now): it grows even if the counter expired and was
-- created anew, so a generation number is never reused and old entries never reappear.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local next = math.max(current + 1, tonumber(ARGV[1]))
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', ARGV[2])
return next
