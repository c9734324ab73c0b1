-- Delete a cache entry and its lease.
-- KEYS[1] entry hash; ARGV[1] now
-- Returns 1 when the key held a value that was still servable (fresh or stale), else 0, so a
-- lease-only or dead hash does not count as "existed" (the in-memory store counts the same way).
local h = redis.call('HMGET', KEYS[1], 'v', 's')
redis.call('DEL', KEYS[1])
if h[1] and tonumber(h[2]) > tonumber(ARGV[1]) then
  return 1
end
return 0
