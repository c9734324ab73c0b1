-- Shared by every session script (after src/store/redis/lua/clock.lua, before the script).
-- Every time is the store's: `now` is store_now(), expiries are relative (PEXPIRE), so replicas
-- with different clocks agree on when a session dies.
--
-- A session is a hash: _u user id, _c created, _l last seen, _e expires, _a absolute expiry,
-- _i idle timeout, _v version, _n data field count, _z data bytes (names + values),
-- d:<name> data fields, m:<name> metadata fields.
-- Keys built inside scripts (base .. member) carry the same {hash tag} as KEYS, so they live in
-- the same Redis Cluster slot as the keys the script declares.

-- Whether the session hash at `key` exists and has not passed its expiry at `now`.
local function live(key, now)
  local e = redis.call('HGET', key, '_e')
  return e ~= false and tonumber(e) > now
end

-- The user index lives as long as its longest-lived session.
local function extend_index(index, at, now)
  local ttl = redis.call('PTTL', index)
  if ttl < 0 or now + ttl < at then
    redis.call('PEXPIRE', index, int(math.max(at - now, 1)))
  end
end

-- Activity at `now`: slide the idle expiry, never past the absolute one. Returns the new expiry.
local function touch(key, now)
  local f = redis.call('HMGET', key, '_i', '_a')
  local e = math.min(now + tonumber(f[1]), tonumber(f[2]))
  redis.call('HSET', key, '_l', int(now), '_e', int(e))
  redis.call('PEXPIRE', key, int(math.max(e - now, 1)))
  return e
end
