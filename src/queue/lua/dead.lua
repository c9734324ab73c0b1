-- Dead jobs, most recent first. ARGV[1] most listed. Returns per job: id, payload, attempts,
-- last error, died at ms, enqueued ms.
local out = {}
local list = redis.call('ZREVRANGE', X, 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
for i = 1, #list, 2 do
  local id = list[i]
  local j = load(id)
  if j then
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', D, id) or ''
    out[#out + 1] = j.a
    out[#out + 1] = redis.call('HGET', E, id) or ''
    out[#out + 1] = tonumber(list[i + 1])
    out[#out + 1] = j.e
  end
end
return out
