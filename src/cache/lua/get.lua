-- Look a cache entry up and grant its lease (plain reads use HMGET and TIME, no script).
-- KEYS[1] entry hash (v value, e fresh until, s stale until: store-clock ms; the key expires at s),
-- KEYS[2] lease (a string "<granted at ms>:<token>" that expires with the lease)
-- ARGV[1] token to grant, ARGV[2] lease TTL ms
-- Returns {state (0 miss, 1 fresh, 2 stale), value, fresh ms left, lease (0 none, 1 granted,
-- 2 held by another caller)}.
local now = store_now()
local h = redis.call('HMGET', KEYS[1], 'v', 'e', 's')
local state, value = 0, ''
if h[1] then
  local e, s = tonumber(h[2]), tonumber(h[3])
  if e and now < e then
    return {1, h[1], e - now, 0}
  end
  if s and now < s then
    state, value = 2, h[1]
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {state, value, 0, 2}
end
redis.call('SET', KEYS[2], int(now) .. ':' .. ARGV[1], 'PX', ARGV[2])
return {state, value, 0, 1}
