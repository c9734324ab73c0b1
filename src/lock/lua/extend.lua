-- Give a live holding a new TTL from now.
-- KEYS[1] holders, KEYS[2] holdings; ARGV[1] holder id, ARGV[2] ttl ms
-- Returns {fence, expires at ms}, or {} when this holder does not hold it (any more).
local now = store_now()
local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expires or tonumber(expires) <= now then
  return {}
end
redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[2]), ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local keep = math.max(tonumber(last[2]) - now, 1) + 1000
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[2], keep)
local h = redis.call('HGET', KEYS[2], ARGV[1]) or '0|'
return {tonumber(string.match(h, '^(%d+)')), now + tonumber(ARGV[2])}
