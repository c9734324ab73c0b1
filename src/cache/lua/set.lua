-- Write a cache entry, subject to its condition and lease.
-- KEYS[1] entry hash
-- ARGV[1] now, ARGV[2] value, ARGV[3] fresh until, ARGV[4] stale until,
-- ARGV[5] condition ('0' always, '1' if absent, '2' if present), ARGV[6] lease token ('' none)
-- Returns 1 when stored, 0 when the condition or a lost lease refused it. Any write ends the
-- key's lease; a Delete or invalidation removes the hash and with it the lease, which is how a
-- late Set from a lease holder is refused.
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'v', 'e', 'l', 'u')
if ARGV[6] ~= '' then
  if h[3] ~= ARGV[6] or not h[4] or tonumber(h[4]) <= now then
    return 0
  end
end
local present = h[1] ~= false and tonumber(h[2]) > now
if (ARGV[5] == '1' and present) or (ARGV[5] == '2' and not present) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'e', ARGV[3], 's', ARGV[4])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return 1
