-- List an entry under a tag, before the entry is written. The index is a sorted set scored by
-- when each member stops mattering (the entry's lifetime plus a margin for the write that
-- follows the listing), pruned here of members past it, and it lives as long as its
-- longest-lived member. Members stay listed after an invalidation until they expire, so a Set
-- racing an invalidation is always found by the next one.
-- KEYS[1] tag index, KEYS[2] the tag's invalidation mark
-- ARGV[1] entry key, ARGV[2] ms the member must stay listed
-- Returns when the tag was last invalidated (ms, store clock; 0 if not within the lease TTL).
local now = store_now()
local until_ms = now + tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
redis.call('ZADD', KEYS[1], int(until_ms), ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or ttl < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return tonumber(redis.call('GET', KEYS[2]) or '0')
