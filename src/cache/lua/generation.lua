-- A namespace's generation: every entry key embeds it, so a new generation hides every older
-- entry at once (InvalidateNamespace), and old entries simply expire.
-- KEYS[1] generation; ARGV[1] ms it is kept, ARGV[2] '1' to start a new generation
-- Returns the generation in force. A new one (and one created because the key was missing,
-- e.g. evicted) is max(current + 1, now in microseconds), so no generation number is ever
-- used twice and a lost counter causes misses, never old entries coming back.
-- Without '1' the current generation is returned and its TTL renewed (each replica runs this
-- once per quarter of the TTL, so an active namespace's generation never expires).
local current = redis.call('GET', KEYS[1])
if current and ARGV[2] ~= '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  return tonumber(current)
end
local t = redis.call('TIME')
local micros = tonumber(t[1]) * 1000000 + tonumber(t[2])
local next = math.max(tonumber(current or '0') + 1, micros)
redis.call('SET', KEYS[1], int(next), 'PX', ARGV[1])
return next
