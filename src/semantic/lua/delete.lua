-- Deletes one entry and logs it. KEYS as set.lua's (index, counter, log, base);
-- ARGV[1] the id, ARGV[2] log length. Returns 1 if the entry was live.
local id = ARGV[1]
local live = redis.call('UNLINK', KEYS[4] .. id)
local listed = redis.call('ZREM', KEYS[1], id)
if live + listed > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'o', '-', 'i', id)
  -- A log this call created lives no longer than the index.
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 and redis.call('PTTL', KEYS[3]) == -1 then
    redis.call('PEXPIRE', KEYS[3], left)
  end
end
return live
