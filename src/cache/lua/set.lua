-- Write a cache entry, subject to its condition and lease.
-- KEYS[1] entry hash, KEYS[2] lease
-- ARGV[1] value, ARGV[2] fresh ms, ARGV[3] stale window ms,
-- ARGV[4] condition ('0' always, '1' if absent, '2' if present), ARGV[5] lease token ('' none),
-- ARGV[6] latest invalidation of the entry's tags (ms, store clock; '0' none)
-- Returns 1 when stored, 0 when the condition or the lease refused it. A lease is honoured only
-- while it lives, for its own token, and when none of the tags the value is written with was
-- invalidated at or after the lease was granted (the value may be computed from what the
-- invalidation was about). Any write ends the key's lease; a Delete or invalidation deletes the
-- lease with the entry, which is how a late Set from a lease holder is refused.
local now = store_now()
if ARGV[5] ~= '' then
  local lease = redis.call('GET', KEYS[2])
  if not lease then
    return 0
  end
  local sep = string.find(lease, ':', 1, true)
  if not sep or string.sub(lease, sep + 1) ~= ARGV[5] then
    return 0
  end
  if tonumber(string.sub(lease, 1, sep - 1)) <= tonumber(ARGV[6]) then
    return 0
  end
end
if ARGV[4] ~= '0' then
  local e = redis.call('HGET', KEYS[1], 'e')
  local present = e ~= false and tonumber(e) > now
  if (ARGV[4] == '1' and present) or (ARGV[4] == '2' and not present) then
    return 0
  end
end
local fresh = now + tonumber(ARGV[2])
local life = tonumber(ARGV[2]) + tonumber(ARGV[3])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'e', int(fresh), 's', int(now + life))
redis.call('PEXPIRE', KEYS[1], int(life))
return 1
