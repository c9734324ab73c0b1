-- The live holdings of a lock, its waiters and its last fencing token (reads only).
-- KEYS[1] holders, KEYS[2] holdings, KEYS[3] fence, KEYS[5] queue leases (KEYS[4] unused)
-- Returns {last fence, waiters, id, expires at, holding, id, expires at, holding, ...}.
local now = store_now()
local out = {tonumber(redis.call('GET', KEYS[3]) or '0'), redis.call('ZCOUNT', KEYS[5], '(' .. now, '+inf')}
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #live, 2 do
  out[#out + 1] = live[i]
  out[#out + 1] = tonumber(live[i + 1])
  out[#out + 1] = redis.call('HGET', KEYS[2], live[i]) or ''
end
return out
