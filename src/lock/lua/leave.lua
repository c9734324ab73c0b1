-- A waiter gives up its place (it got tired of waiting, or its call was cancelled).
-- KEYS[1] holders (the channel), KEYS[4] queue, KEYS[5] queue leases (KEYS[2], KEYS[3] unused)
-- ARGV[1] ticket
if redis.call('ZREM', KEYS[4], ARGV[1]) == 1 then
  redis.call('ZREM', KEYS[5], ARGV[1])
  -- Those behind it move up: one of them may now be within the free slots.
  if redis.call('ZCARD', KEYS[4]) > 0 then
    redis.call('PUBLISH', KEYS[1], 'l')
  end
end
return 1
