-- Look a cache entry up and, when asked, grant its lease.
-- KEYS[1] entry hash (v value, w stale window ms; its TTL is fresh time + stale window),
-- KEYS[2] lease (a string "<granted at ms>:<token>" that expires with the lease)
-- ARGV[1] token to grant ('' when no lease is wanted), ARGV[2] lease TTL ms
-- Returns {state (0 miss, 1 fresh, 2 stale), value, fresh ms left, lease (0 none, 1 granted,
-- 2 held by another caller)}. Freshness comes from the entry's own TTL: no clock is compared.
local h = redis.call('HMGET', KEYS[1], 'v', 'w')
local ttl = redis.call('PTTL', KEYS[1])
local state, value, fresh = 0, '', 0
if h[1] and ttl > 0 then
  local w = tonumber(h[2]) or 0
  if ttl > w then
    return {1, h[1], ttl - w, 0}
  end
  state, value = 2, h[1]
end
if ARGV[1] == '' then
  return {state, value, fresh, 0}
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {state, value, fresh, 2}
end
redis.call('SET', KEYS[2], int(store_now()) .. ':' .. ARGV[1], 'PX', ARGV[2])
return {state, value, fresh, 1}
