-- Give a holding up and wake the waiters.
-- KEYS[1] holders (and the channel), KEYS[2] holdings; ARGV[1] holder id
-- Returns 1 when released, 0 when this holder did not hold it (any more).
local now = store_now()
local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not expires then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if tonumber(expires) <= now then
  -- It had expired: the slot was free already, and the holder had lost it.
  return 0
end
redis.call('PUBLISH', KEYS[1], 'r')
return 1
