-- Delete one session and its index entry.
-- KEYS[1] session hash, KEYS[2] user index; ARGV[1] member
-- Returns the user id of the live session deleted, or nil when it was already gone.
local user = false
if live(KEYS[1], store_now()) then
  user = redis.call('HGET', KEYS[1], '_u')
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return user
