-- Delete a cache entry and its lease.
-- KEYS[1] entry hash, KEYS[2] lease
-- Returns 1 when the entry held a value (fresh or stale: a hash lives only as long as it is
-- servable), else 0.
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
return existed
