-- Leases ready jobs. ARGV[1] dead max age ms, ARGV[2] dead max count, ARGV[3..] one holder id
-- per job wanted. First moves due scheduled jobs to ready and takes back expired leases (a
-- job whose last attempt's lease ran out is dead).
-- Returns {paused (0/1), next due in ms (-1: none), ready left, n, then per job: id, payload,
-- attempt, max attempts, enqueued ms, lease deadline ms, last error, priority, waited ms,
-- timeout ms}.
local dead_age, dead_count = tonumber(ARGV[1]), tonumber(ARGV[2])
local want = #ARGV - 2

local moved = 0
local due = redis.call('ZRANGEBYSCORE', Z, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1000)
for i = 1, #due, 2 do
  local id = due[i]
  redis.call('ZREM', Z, id)
  local j = load(id)
  if j then
    j.d = tonumber(due[i + 1])
    make_ready(id, j)
    moved = moved + 1
  end
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', L, '-inf', now, 'LIMIT', 0, 1000)) do
  redis.call('ZREM', L, id)
  local j = load(id)
  if j then
    local err = 'lease expired: not acknowledged within ' .. int(j.t) .. ' ms'
    if j.a >= j.m then
      bury(id, j, err, dead_age, dead_count)
    else
      unready(j)
      j.d = now
      make_ready(id, j)
      redis.call('HSET', E, id, err)
      moved = moved + 1
    end
  end
end

prune_dead(dead_age, dead_count)

local paused = redis.call('EXISTS', P)
local out = {}
local taken = 0
if paused == 0 then
  for p = 1, 3 do
    if taken < want and redis.call('EXISTS', R[p]) == 1 then
      local res = redis.call('XREADGROUP', 'GROUP', 'g', 'c', 'COUNT', want - taken,
        'STREAMS', R[p], '>')
      if res then
        for _, entry in ipairs(res[1][2]) do
          local sid, id = entry[1], entry[2][2]
          local j = load(id)
          if j and j.sid == sid then
            taken = taken + 1
            j.a = j.a + 1
            j.h = ARGV[2 + taken]
            save(id, j)
            redis.call('ZADD', L, now + j.t, id)
            out[#out + 1] = id
            out[#out + 1] = redis.call('HGET', D, id) or ''
            out[#out + 1] = j.a
            out[#out + 1] = j.m
            out[#out + 1] = j.e
            out[#out + 1] = now + j.t
            out[#out + 1] = redis.call('HGET', E, id) or ''
            out[#out + 1] = j.p
            out[#out + 1] = math.max(now - j.d, 0)
            out[#out + 1] = j.t
          else
            -- An entry whose job is gone or was moved on: drop it.
            redis.call('XACK', R[p], 'g', sid)
            redis.call('XDEL', R[p], sid)
          end
        end
      end
    end
  end
end

local left = ready_in(R[1]) + ready_in(R[2]) + ready_in(R[3])
-- Jobs this call made ready that it did not take: wake the other waiting workers.
if moved > 0 and left > 0 then
  redis.call('PUBLISH', R[2], 'j')
end
local next_due = -1
for _, key in ipairs({Z, L}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local wait = math.max(tonumber(first[2]) - now, 1)
    if next_due < 0 or wait < next_due then next_due = wait end
  end
end
local head = {paused, next_due, left, taken}
for _, v in ipairs(out) do head[#head + 1] = v end
return head
