-- Keep a topic that has subscribers from expiring while nothing is published on it, and trim
-- what has aged past its retention.
-- KEYS[1] stream; ARGV[1] longest age kept, ms
if redis.call('EXISTS', KEYS[1]) == 1 then
  local age = tonumber(ARGV[1])
  redis.call('XTRIM', KEYS[1], 'MINID', '=', int(math.max(store_now() - age, 0)))
  redis.call('PEXPIRE', KEYS[1], 2 * age)
end
return 1
