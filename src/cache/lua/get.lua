-- Look a cache entry up and, when asked, grant its lease.
-- KEYS[1] entry hash: v value, e fresh until, s stale until, l lease token, u lease until (ms)
-- ARGV[1] now, ARGV[2] token to grant ('' when no lease is wanted), ARGV[3] lease ttl ms
-- Returns {state (0 miss, 1 fresh, 2 stale), value, fresh until, lease (0 none, 1 granted, 2 wait)}
local now = tonumber(ARGV[1])
local h = redis.call('HMGET', KEYS[1], 'v', 'e', 's', 'l', 'u')
local state, value, fresh_until = 0, '', 0
if h[1] then
  local e, s = tonumber(h[2]), tonumber(h[3])
  if now < e then
    return {1, h[1], e, 0}
  end
  if now < s then
    state, value, fresh_until = 2, h[1], e
  end
end
if ARGV[2] == '' then
  return {state, value, fresh_until, 0}
end
if h[4] and tonumber(h[5]) > now then
  return {state, value, fresh_until, 2}
end
local lease_until = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'l', ARGV[2], 'u', string.format('%d', lease_until))
-- The hash (value or not) lives at least as long as the lease.
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 or now + ttl < lease_until then
  redis.call('PEXPIREAT', KEYS[1], string.format('%d', lease_until))
end
return {state, value, fresh_until, 1}
