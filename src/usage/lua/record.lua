-- Adds one subject's usage of one metric to its buckets (after clock.lua and buckets.lua).
-- KEYS[1] the subject's base key, ending in ':' (its hash tag is the metric and subject); the
-- buckets are `<base><g>:<index>` hashes (field `_` the total, `k=v` per dimension value) and
-- `<base>u:<g>:<index>` HyperLogLogs of unique values, all in KEYS[1]'s slot: their names come
-- from the store's clock, which only the script reads.
-- ARGV[1] the batch id ('' for none) and ARGV[2] how long it is remembered (ms): a batch seen
-- before is not counted again (`<base>b:<id>`, in the same slot); ARGV[3..6] retention ms after a
-- bucket ends (minute, hour, day, month), ARGV[7] most fields per bucket hash, ARGV[8] n fields,
-- then n (field, amount) pairs, then n2 unique values.
-- A field new to a full bucket counts as `<dimension>=_other`. Returns the store's time.
local now = store_now()
local base = KEYS[1]
if ARGV[1] ~= '' and not redis.call('SET', base .. 'b:' .. ARGV[1], '1', 'NX', 'PX', ARGV[2]) then
  return now
end
local keep = {tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])}
local max_fields = tonumber(ARGV[7])
local n = tonumber(ARGV[8])
local uniques_at = 9 + 2 * n
local n_unique = tonumber(ARGV[uniques_at]) or 0
for gi, g in ipairs(GRANULARITIES) do
  local index, ends = bucket(g, now)
  local ttl = ends - now + keep[gi]
  local key = base .. g .. ':' .. int(index)
  for i = 0, n - 1 do
    local field, amount = ARGV[9 + 2 * i], ARGV[10 + 2 * i]
    if field ~= '_' and redis.call('HEXISTS', key, field) == 0
        and redis.call('HLEN', key) >= max_fields then
      field = string.match(field, '^(.-)=') .. '=_other'
    end
    redis.call('HINCRBY', key, field, amount)
  end
  redis.call('PEXPIRE', key, int(ttl))
  if n_unique > 0 and g ~= 'm' then
    local hll = base .. 'u:' .. g .. ':' .. int(index)
    redis.call('PFADD', hll, unpack(ARGV, uniques_at + 1, uniques_at + n_unique))
    redis.call('PEXPIRE', hll, int(ttl))
  end
end
return now
