-- Shared by every session script (prepended at build time by include_str!).
-- Times are Unix milliseconds chosen by the caller (ARGV[1] = now), so the Redis and in-memory
-- stores apply the same rules from the same clock. Numbers are written with %d: tostring() would
-- turn a millisecond timestamp into 1.7e+12.
--
-- A session is a hash: _u user id, _c created, _l last seen, _e expires, _a absolute expiry,
-- _i idle timeout, _v version, _n data field count, _z data bytes (names + values),
-- d:<name> data fields, m:<name> metadata fields.
-- Keys built inside scripts (base .. member) carry the same {hash tag} as KEYS, so they live in
-- the same Redis Cluster slot as the keys the script declares.

local function int(n)
  return string.format('%d', n)
end

-- Whether the session hash at `key` exists and has not passed its expiry at `now`.
local function live(key, now)
  local e = redis.call('HGET', key, '_e')
  return e ~= false and tonumber(e) > now
end

-- Activity at `now`: slide the idle expiry, never past the absolute one. Returns the new expiry.
local function touch(key, now)
  local f = redis.call('HMGET', key, '_i', '_a')
  local e = math.min(now + tonumber(f[1]), tonumber(f[2]))
  redis.call('HSET', key, '_l', int(now), '_e', int(e))
  redis.call('PEXPIREAT', key, int(e))
  return e
end

-- The user index lives as long as its longest-lived session.
local function extend_index(index, at, now)
  local ttl = redis.call('PTTL', index)
  if ttl < 0 or now + ttl < at then
    redis.call('PEXPIREAT', index, int(at))
  end
end
