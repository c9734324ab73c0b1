-- Reads the first live entry of a few candidates (best first).
-- KEYS[1] the entries' base key (see set.lua); ARGV the candidate ids.
-- Returns {id, value, labels, ttl ms} of the first that still exists, or {0, missing ids...}:
-- the caller drops those from its index (deleted, expired or evicted before it heard).
local missing = {0}
for _, id in ipairs(ARGV) do
  local key = KEYS[1] .. id
  local entry = redis.call('HMGET', key, 'd', 'm')
  if entry[1] then
    return {tonumber(id), entry[1], entry[2] or '{}', redis.call('PTTL', key)}
  end
  missing[#missing + 1] = id
end
return missing
