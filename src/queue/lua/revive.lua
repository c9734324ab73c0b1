-- Retries or discards dead jobs. ARGV[1] 'retry' or 'discard', ARGV[2] most jobs when ARGV[3]
-- is absent (all), ARGV[3..] the ids. Returns how many were dead and handled.
local ids = {}
if #ARGV > 2 then
  for i = 3, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', X, 0, tonumber(ARGV[2]) - 1)
end
local done = 0
for _, id in ipairs(ids) do
  if redis.call('ZSCORE', X, id) then
    done = done + 1
    redis.call('ZREM', X, id)
    local j = load(id)
    if ARGV[1] == 'discard' or not j then
      forget_id(id)
    else
      j.a = 0
      j.d = now
      -- Its unique key again, unless another live job took it meanwhile.
      if j.u ~= '' then
        local other = redis.call('HGET', U, j.u)
        if other and other ~= id and redis.call('HEXISTS', M, other) == 1 then
          j.u = ''
        else
          redis.call('HSET', U, j.u, id)
        end
      end
      make_ready(id, j)
    end
  end
end
if done > 0 and ARGV[1] == 'retry' then
  persist_all()
  redis.call('PUBLISH', R[2], 'j')
end
return done
