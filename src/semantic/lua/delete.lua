-- Deletes one entry and logs it. KEYS as set.lua's (index, counter, log, base);
-- ARGV[1] the id, ARGV[2] log length. Returns 1 if the entry was live.
local id = ARGV[1]
local live = redis.call('UNLINK', KEYS[4] .. id)
local listed = redis.call('ZREM', KEYS[1], id)
-- Logged only into an existing log (which has its TTL): a replica finding the log gone reloads
-- the namespace anyway, and a log created here would never expire.
if live + listed > 0 and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'o', '-', 'i', id)
end
return live
