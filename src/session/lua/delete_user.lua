-- Delete all of a user's sessions except one ("log out everywhere else").
-- KEYS[1] user index; ARGV[1] session key base, ARGV[2] user id, ARGV[3] member to keep ('' none)
-- Returns the number of live sessions deleted. The user id is compared because two users'
-- 64-bit tags could, with negligible probability, collide and share an index.
local now = store_now()
local deleted = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if m ~= ARGV[3] then
    local key = ARGV[1] .. m
    local user = redis.call('HGET', key, '_u')
    if user == ARGV[2] then
      if live(key, now) then
        deleted = deleted + 1
      end
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[1], m)
    elseif user == false then
      redis.call('ZREM', KEYS[1], m)
    end
  end
end
return deleted
