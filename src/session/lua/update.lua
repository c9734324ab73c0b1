-- Field-level update with optional compare-and-set and size limits; counts as activity.
-- KEYS[1] session hash, KEYS[2] user index
-- ARGV[1] expected version (0 = any), ARGV[2] max fields, ARGV[3] max bytes,
-- ARGV[4] number of fields to set (n), ARGV[5 .. 4+2n] name/value pairs to set,
-- ARGV[5+2n ..] names to remove (distinct, none also set)
-- Returns {1, hash} updated, {0} not found, {-1, version} conflict, {-2, 'fields'|'bytes'} too large.
local now = store_now()
local key = KEYS[1]
if not live(key, now) then
  return {0}
end
local meta = redis.call('HMGET', key, '_v', '_n', '_z')
local version, count, size = tonumber(meta[1]), tonumber(meta[2]), tonumber(meta[3])
local expected = tonumber(ARGV[1])
if expected ~= 0 and expected ~= version then
  return {-1, version}
end
local first_set = 5
local first_remove = first_set + 2 * tonumber(ARGV[4])
-- Work out the size after the change before changing anything: a refused update changes nothing.
for i = first_remove, #ARGV do
  local len = redis.call('HSTRLEN', key, 'd:' .. ARGV[i])
  if redis.call('HEXISTS', key, 'd:' .. ARGV[i]) == 1 then
    count = count - 1
    size = size - #ARGV[i] - len
  end
end
for i = first_set, first_remove - 1, 2 do
  if redis.call('HEXISTS', key, 'd:' .. ARGV[i]) == 1 then
    size = size - redis.call('HSTRLEN', key, 'd:' .. ARGV[i]) + #ARGV[i + 1]
  else
    count = count + 1
    size = size + #ARGV[i] + #ARGV[i + 1]
  end
end
if count > tonumber(ARGV[2]) then
  return {-2, 'fields'}
end
if size > tonumber(ARGV[3]) then
  return {-2, 'bytes'}
end
for i = first_remove, #ARGV do
  redis.call('HDEL', key, 'd:' .. ARGV[i])
end
for i = first_set, first_remove - 1, 2 do
  redis.call('HSET', key, 'd:' .. ARGV[i], ARGV[i + 1])
end
redis.call('HSET', key, '_v', int(version + 1), '_n', int(count), '_z', int(size))
extend_index(KEYS[2], touch(key, now), now)
return {1, redis.call('HGETALL', key)}
