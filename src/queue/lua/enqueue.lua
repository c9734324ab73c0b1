-- Adds jobs, all or none. ARGV[1] most jobs the queue may hold, ARGV[2] job count, then per
-- job 10 values: id, payload, delay ms (-1: none), run at ms (-1: none), max attempts, timeout
-- ms, backoff ms, max backoff ms, priority (0-2), unique key ('' for none).
-- Returns {-1, jobs held} when the queue would be over its bound; else per job {id, duplicate
-- (0/1), due ms}.
local max_jobs, n = tonumber(ARGV[1]), tonumber(ARGV[2])

-- First pass: duplicates (of live jobs, or of an earlier job of this batch) add nothing.
local existing, batch, fresh = {}, {}, 0
for i = 0, n - 1 do
  local o = 3 + i * 10
  local u = ARGV[o + 9]
  if u ~= '' then
    local id = batch[u]
    if not id then
      id = redis.call('HGET', U, u)
      if id and redis.call('HEXISTS', M, id) == 0 then id = nil end
    end
    if id then
      existing[i] = id
    else
      batch[u] = ARGV[o]
      fresh = fresh + 1
    end
  else
    fresh = fresh + 1
  end
end
local held = redis.call('HLEN', M)
if fresh > 0 and held + fresh > max_jobs then
  return {-1, held}
end

if fresh > 0 then
  persist_all()
end

local out, woke = {}, false
for i = 0, n - 1 do
  local o = 3 + i * 10
  local id = existing[i]
  if id then
    local j = load(id)
    out[#out + 1] = id
    out[#out + 1] = 1
    out[#out + 1] = j and j.d or now
  else
    id = ARGV[o]
    local delay, run_at = tonumber(ARGV[o + 2]), tonumber(ARGV[o + 3])
    local due = now
    if delay >= 0 then
      due = now + delay
    elseif run_at >= 0 then
      due = math.max(run_at, now)
    end
    local j = {a = 0, m = tonumber(ARGV[o + 4]), t = tonumber(ARGV[o + 5]),
               b = tonumber(ARGV[o + 6]), bm = tonumber(ARGV[o + 7]), p = tonumber(ARGV[o + 8]),
               e = now, d = due, h = '', sid = '', u = ARGV[o + 9]}
    redis.call('HSET', D, id, ARGV[o + 1])
    if due <= now then
      make_ready(id, j)
    else
      save(id, j)
      redis.call('ZADD', Z, due, id)
    end
    if j.u ~= '' then
      redis.call('HSET', U, j.u, id)
    end
    woke = true
    out[#out + 1] = id
    out[#out + 1] = 0
    out[#out + 1] = due
  end
end
-- Waiting workers look again: a job is ready, or one is due sooner than they planned to wake.
if woke then
  redis.call('PUBLISH', R[2], 'j')
end
return out
