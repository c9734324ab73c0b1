-- Removes a job leased to a holder. ARGV[1] id, ARGV[2] holder id, ARGV[3] dead max age ms.
-- Returns 1, or 0 when the job is not leased to that holder (any more).
local id = ARGV[1]
local j = load(id)
if not j or j.h == '' or j.h ~= ARGV[2] then
  return 0
end
forget(id, j)
expire_if_only_dead(tonumber(ARGV[3]))
return 1
