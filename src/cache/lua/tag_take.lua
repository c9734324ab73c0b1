-- Take a tag's index for invalidation: its live members, and the index itself removed in the
-- same step, so a Set that lists itself afterwards lands in a fresh index instead of being lost.
-- KEYS[1] tag index; ARGV[1] now
-- Returns the entry keys still servable when the tag was taken.
local members = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
redis.call('DEL', KEYS[1])
return members
