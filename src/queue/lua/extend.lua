-- A new lease deadline for a holder's job. ARGV[1] id, ARGV[2] holder id, ARGV[3] timeout ms
-- (-1: the job's own). Returns the deadline, or -1 when the job is not leased to that holder.
local id = ARGV[1]
local j = load(id)
if not j or j.h == '' or j.h ~= ARGV[2] then
  return -1
end
local t = tonumber(ARGV[3])
if t < 0 then t = j.t end
redis.call('ZADD', L, now + t, id)
return now + t
