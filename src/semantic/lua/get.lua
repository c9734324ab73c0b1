-- Reads the first live entry of a few candidates (best first).
-- KEYS[1] the entries' base key (see set.lua); ARGV the candidate ids.
-- Returns {id, value, labels, ttl ms, vector} of the first that still exists (the caller scores
-- the vector itself: the entry is served only if it is the one it thought), or
-- {0, missing ids...}: the caller drops those from its index (deleted, expired or evicted
-- before it heard).
local missing = {0}
for _, id in ipairs(ARGV) do
  local key = KEYS[1] .. id
  local entry = redis.call('HMGET', key, 'd', 'm', 'v')
  if entry[1] then
    return {tonumber(id), entry[1], entry[2] or '{}', redis.call('PTTL', key), entry[3] or ''}
  end
  missing[#missing + 1] = id
end
return missing
