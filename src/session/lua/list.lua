-- List a user's live sessions, pruning dead index entries on the way. Data fields (d:*) stay in
-- Redis: a listing shows handles, timestamps and metadata, never data.
-- KEYS[1] user index; ARGV[1] session key base
-- Returns a flat array: member, hash without data (a field/value array), member, hash, ...
local now = store_now()
local out = {}
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. m
  if live(key, now) then
    local fields = redis.call('HGETALL', key)
    local shown = {}
    for i = 1, #fields, 2 do
      if string.sub(fields[i], 1, 2) ~= 'd:' then
        shown[#shown + 1] = fields[i]
        shown[#shown + 1] = fields[i + 1]
      end
    end
    out[#out + 1] = m
    out[#out + 1] = shown
  else
    redis.call('ZREM', KEYS[1], m)
  end
end
return out
