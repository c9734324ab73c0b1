-- Prepended to every script that decides by time (see `lua!` in src/store/redis/mod.rs).
-- The store's clock decides every expiry, window and lease: Redis's own TIME, never a caller's,
-- because flowstate replicas' clocks disagree. Expiries are set relative (PEXPIRE), and numbers
-- are written with %d (tostring() would turn a millisecond timestamp into 1.7e+12).
-- Scripts that write after reading TIME need effects replication, the default since Redis 5.

local function store_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(n)
  return string.format('%d', n)
end
