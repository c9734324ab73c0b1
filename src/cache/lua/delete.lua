-- Delete a cache entry and its lease.
-- KEYS[1] entry hash, KEYS[2] lease, KEYS[3] the generation of the entry's bucket (all three
-- in the bucket's slot); ARGV[1] the generation the entry key names
-- Returns 1 when the entry held a value (fresh or stale: a hash lives only as long as it is
-- servable) in its bucket's current generation, else 0: an entry of an older generation was
-- invisible already, so deleting it deletes nothing anyone could read.
local existed = redis.call('EXISTS', KEYS[1])
redis.call('DEL', KEYS[1], KEYS[2])
if existed == 1 and redis.call('GET', KEYS[3]) == ARGV[1] then
  return 1
end
return 0
