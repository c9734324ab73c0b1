-- List a user's live sessions, pruning dead index entries on the way.
-- KEYS[1] user index; ARGV[1] session key base
-- Returns a flat array: member, hash (as a field/value array), member, hash, ...
local now = store_now()
local out = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. m
  if live(key, now) then
    out[#out + 1] = m
    out[#out + 1] = redis.call('HGETALL', key)
  else
    redis.call('ZREM', KEYS[1], m)
  end
end
return out
