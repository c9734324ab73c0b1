-- Makes a holder's job ready again at once, the attempt not counted. ARGV[1] id, ARGV[2]
-- holder id. Returns 1, or 0 when the job is not leased to that holder.
local id = ARGV[1]
local j = load(id)
if not j or j.h == '' or j.h ~= ARGV[2] then
  return 0
end
redis.call('ZREM', L, id)
unready(j)
j.a = math.max(j.a - 1, 0)
j.d = now
make_ready(id, j)
redis.call('PUBLISH', R[2], 'j')
return 1
