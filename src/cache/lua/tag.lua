-- List an entry under a tag. The index is a sorted set scored by when each entry stops being
-- servable: members past it are pruned here (same key, same slot), so the index holds live
-- entries only and lives as long as its longest-lived member.
-- KEYS[1] tag index; ARGV[1] now, ARGV[2] entry key, ARGV[3] entry's stale-until
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or tonumber(ARGV[1]) + ttl < tonumber(ARGV[3]) then
  redis.call('PEXPIREAT', KEYS[1], ARGV[3])
end
return 1
