-- The `n` highest subjects of one shard of a metric's top index over the last `count`
-- buckets of granularity `g` (the current one included), on the store's clock (after
-- clock.lua and buckets.lua).
-- KEYS[1] the shard's base key, ending in ':'. ARGV[1] g, ARGV[2] count, ARGV[3] n,
-- ARGV[4] a random suffix for the scratch key (in the same slot, deleted before returning).
-- Returns the current bucket's index, then subject, score pairs, highest first.
local now = store_now()
local base, g = KEYS[1], ARGV[1]
local count, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local index = bucket(g, now)
local out = {int(index)}
local keys = {}
local last = index
for i = 0, count - 1 do
  local k = base .. g .. ':' .. int(last - i)
  if redis.call('EXISTS', k) == 1 then keys[#keys + 1] = k end
end
local rows
if #keys == 0 then
  return out
elseif #keys == 1 then
  rows = redis.call('ZREVRANGE', keys[1], 0, n - 1, 'WITHSCORES')
else
  local scratch = base .. 'scratch:' .. ARGV[4]
  redis.call('ZUNIONSTORE', scratch, #keys, unpack(keys))
  rows = redis.call('ZREVRANGE', scratch, 0, n - 1, 'WITHSCORES')
  redis.call('DEL', scratch)
end
for _, v in ipairs(rows) do out[#out + 1] = v end
return out
