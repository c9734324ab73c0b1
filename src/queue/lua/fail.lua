-- Ends a holder's attempt as failed. ARGV[1] id, ARGV[2] holder id, ARGV[3] error, ARGV[4]
-- retry after ms (-1: the backoff), ARGV[5] jitter in [0, 1), ARGV[6] dead max age ms, ARGV[7]
-- dead max count. Returns {} when the job is not leased to that holder, {1} when it is dead,
-- {0, due ms} when it runs again.
local id = ARGV[1]
local j = load(id)
if not j or j.h == '' or j.h ~= ARGV[2] then
  return {}
end
if j.a >= j.m then
  bury(id, j, ARGV[3], tonumber(ARGV[6]), tonumber(ARGV[7]))
  return {1}
end
local delay = tonumber(ARGV[4])
if delay < 0 then
  -- Exponential, capped, with equal jitter (src/queue/model.rs backoff_ms): half of the full
  -- delay plus up to the other half, so retries spread out yet each waits longer than the last.
  local full = math.min(j.b * 2 ^ math.min(j.a - 1, 40), j.bm)
  local half = math.floor(full / 2)
  delay = half + math.floor((full - half) * tonumber(ARGV[5]))
end
unready(j)
redis.call('ZREM', L, id)
j.h = ''
j.d = now + delay
save(id, j)
redis.call('ZADD', Z, j.d, id)
redis.call('HSET', E, id, ARGV[3])
redis.call('PUBLISH', R[2], 'j')
return {0, j.d}
