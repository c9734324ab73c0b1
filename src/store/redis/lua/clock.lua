-- Prepended to every script that decides by time (see `lua!` in src/store/redis/mod.rs).
-- The store's clock decides every expiry, window and lease: Redis's own TIME, never a caller's,
-- because flowstate replicas' clocks disagree. Expiries are set relative (PEXPIRE), and numbers
-- are written with %d (tostring() would turn a millisecond timestamp into 1.7e+12).
-- Redis 3.2-4 need effects replication before a write that follows TIME; later ones ignore it.
if redis.replicate_commands then redis.replicate_commands() end

local function store_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(n)
  return string.format('%d', n)
end
