-- Grant a holding of a lock (or a slot of a semaphore), or queue the caller as a waiter.
-- KEYS[1] holders (zset: holder id -> expiry ms; also the channel releases are published on)
-- KEYS[2] holdings (hash: holder id -> "fence|acquired ms|metadata json")
-- KEYS[3] fence (the last fencing token granted)
-- KEYS[4] queue (zset: ticket -> arrival, microseconds), KEYS[5] queue leases (ticket -> expiry)
-- ARGV[1] holder id, ARGV[2] ttl ms, ARGV[3] limit, ARGV[4] ticket ('' = do not queue),
-- ARGV[5] ticket lease ms, ARGV[6] metadata json, ARGV[7] fence retention ms, ARGV[8] most waiters
-- Returns {1, fence, expires at ms, holders} when granted; {0, retry after ms, holders, queued}
-- when not.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local id, ttl, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ticket, lease = ARGV[4], tonumber(ARGV[5])

-- Expired holdings and waiters that stopped renewing their place go first.
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(gone))
end
local left = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)
if #left > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now)
  redis.call('ZREM', KEYS[4], unpack(left))
end

local function keep(key, by)
  local last = redis.call('ZRANGE', by, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIRE', key, math.max(tonumber(last[2]) - now, 1) + 1000)
  end
end

-- This holder already holds it: an Acquire sent again after its reply was lost.
local mine = redis.call('ZSCORE', KEYS[1], id)
if mine then
  local h = redis.call('HGET', KEYS[2], id) or '0|'
  return {1, tonumber(string.match(h, '^(%d+)')), tonumber(mine), redis.call('ZCARD', KEYS[1])}
end

local held = redis.call('ZCARD', KEYS[1])
local free = limit - held
local granted = false
if free > 0 then
  if redis.call('ZCARD', KEYS[4]) == 0 then
    granted = true
  elseif ticket ~= '' then
    -- Waiters are served in arrival order: the first `free` of them may take a slot.
    local rank = redis.call('ZRANK', KEYS[4], ticket)
    granted = rank ~= false and rank < free
  end
end

if granted then
  -- At least the store's clock in microseconds, and always above the last grant: strictly
  -- increasing even if this key is lost (expired after its retention, or a failover dropped
  -- the last write) as long as the store's clock does not go back further than that.
  local fence = math.max(tonumber(redis.call('GET', KEYS[3]) or '0') + 1, now_us)
  redis.call('SET', KEYS[3], int(fence), 'PX', ARGV[7])
  redis.call('ZADD', KEYS[1], now + ttl, id)
  redis.call('HSET', KEYS[2], id, int(fence) .. '|' .. int(now) .. '|' .. ARGV[6])
  keep(KEYS[1], KEYS[1])
  keep(KEYS[2], KEYS[1])
  if ticket ~= '' and redis.call('ZREM', KEYS[4], ticket) == 1 then
    redis.call('ZREM', KEYS[5], ticket)
    -- Another slot is still free: the next waiters' turn may have come.
    if free > 1 and redis.call('ZCARD', KEYS[4]) > 0 then
      redis.call('PUBLISH', KEYS[1], 'g')
    end
  end
  return {1, fence, now + ttl, held + 1}
end

local queued = 0
if ticket ~= '' then
  local known = redis.call('ZSCORE', KEYS[4], ticket)
  if known or redis.call('ZCARD', KEYS[4]) < tonumber(ARGV[8]) then
    redis.call('ZADD', KEYS[4], 'NX', now_us, ticket)
    redis.call('ZADD', KEYS[5], now + lease, ticket)
    keep(KEYS[4], KEYS[5])
    keep(KEYS[5], KEYS[5])
    queued = 1
  end
end
-- When to try again unless woken: when the earliest holding expires; with a slot free but
-- others ahead, when the earliest of their places lapses (they may be gone).
local retry = lease
local first
if free > 0 then
  first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
else
  first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
end
if first[2] then
  retry = math.max(tonumber(first[2]) - now, 1)
end
return {0, retry, held, queued}
