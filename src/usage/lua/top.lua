-- Adds subjects' amounts of one metric to one shard of its top index (after clock.lua and
-- buckets.lua): sorted sets `<base><g>:<index>`, members subjects, scores their totals.
-- KEYS[1] the shard's base key, ending in ':'.
-- ARGV[1] the batch id ('' for none) and ARGV[2] how long it is remembered (ms), as in
-- record.lua; ARGV[3..6] retention ms after a bucket ends (minute, hour, day, month), then
-- (subject, amount) pairs.
local now = store_now()
local base = KEYS[1]
if ARGV[1] ~= '' and not redis.call('SET', base .. 'b:' .. ARGV[1], '1', 'NX', 'PX', ARGV[2]) then
  return now
end
local keep = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
for gi, g in ipairs(GRANULARITIES) do
  local index, ends = bucket(g, now)
  local key = base .. g .. ':' .. int(index)
  for i = 7, #ARGV, 2 do
    redis.call('ZINCRBY', key, ARGV[i + 1], ARGV[i])
  end
  redis.call('PEXPIRE', key, int(ends - now + keep[gi]))
end
return now
