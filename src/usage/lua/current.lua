-- A subject's total of a metric in the current bucket of one granularity, by the store's clock
-- (after clock.lua and buckets.lua): what a usage quota reads.
-- KEYS[1] the subject's base key, ending in ':'. ARGV[1] the granularity (m, h, d, M).
-- Returns the total and the milliseconds until the bucket ends.
local now = store_now()
local index, ends = bucket(ARGV[1], now)
local used = redis.call('HGET', KEYS[1] .. ARGV[1] .. ':' .. int(index), '_')
return {tonumber(used) or 0, ends - now}
