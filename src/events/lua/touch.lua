-- Keep a topic that has subscribers from expiring while nothing is published on it, and trim
-- what has aged past its retention.
-- KEYS[1] stream; ARGV[1] longest age kept, ms, ARGV[2] most events kept
if redis.call('EXISTS', KEYS[1]) == 1 then
  local age = tonumber(ARGV[1])
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #last > 0 then
    trim(last[1][1], store_now(), tonumber(ARGV[2]), age, nil)
  end
  redis.call('PEXPIRE', KEYS[1], 2 * age)
end
return 1
