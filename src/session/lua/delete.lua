-- Delete one session and its index entry.
-- KEYS[1] session hash, KEYS[2] user index; ARGV[1] member
-- Returns 1 when a live session was deleted, 0 when it was already gone.
local was_live = live(KEYS[1], store_now())
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if was_live then
  return 1
end
return 0
