-- Start invalidating a tag: mark when (so a lease granted before now cannot complete with a
-- value carrying this tag) and read the first chunk of its index. Members are not removed: a
-- Set listed but not yet written must stay findable; they expire with their entries.
-- KEYS[1] tag index, KEYS[2] the tag's invalidation mark
-- ARGV[1] ms the mark is kept (longer than any lease), ARGV[2] chunk size
-- Returns {now, cursor, member, member, ...}: the members still mattering, and the ZSCAN
-- cursor to read the rest with (0 when done). Bounded work: one chunk per call.
local now = store_now()
redis.call('SET', KEYS[2], int(now), 'PX', ARGV[1])
local scan = redis.call('ZSCAN', KEYS[1], '0', 'COUNT', ARGV[2])
local out = {now, tonumber(scan[1])}
local items = scan[2]
for i = 1, #items, 2 do
  if tonumber(items[i + 1]) > now then
    out[#out + 1] = items[i]
  end
end
return out
