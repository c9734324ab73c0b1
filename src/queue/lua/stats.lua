-- A queue's counts: {ready, scheduled, in flight, dead, oldest ready age ms, paused}. Due
-- scheduled jobs count as ready (the next fetch moves them).
local ready, oldest = 0, -1
for p = 1, 3 do
  local key = R[p]
  if redis.call('EXISTS', key) == 1 then
    ready = ready + ready_in(key)
    -- The first entry not yet handed out: after the group's last delivered id.
    local last = '0-0'
    local groups = redis.call('XINFO', 'GROUPS', key)
    if groups[1] then
      local g = groups[1]
      for i = 1, #g, 2 do
        if g[i] == 'last-delivered-id' then last = g[i + 1] end
      end
    end
    local first = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', 1)
    if first[1] then
      local j = load(first[1][2][2])
      if j and (oldest < 0 or j.d < oldest) then oldest = j.d end
    end
  end
end
local due = redis.call('ZCOUNT', Z, '-inf', now)
ready = ready + due
if due > 0 then
  local first = redis.call('ZRANGE', Z, 0, 0, 'WITHSCORES')
  local at = tonumber(first[2])
  if oldest < 0 or at < oldest then oldest = at end
end
local age = 0
if oldest >= 0 then age = math.max(now - oldest, 0) end
return {ready, redis.call('ZCARD', Z) - due, redis.call('ZCARD', L), redis.call('ZCARD', X), age,
        redis.call('EXISTS', P)}
