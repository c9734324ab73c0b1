-- Append an event to a topic's stream, trim it to its retention, and announce it.
-- KEYS[1] stream (also the channel new events are announced on)
-- ARGV[1] payload, ARGV[2] key, ARGV[3] most events kept, ARGV[4] longest age kept, ms
-- Returns the event's id.
local fresh = redis.call('EXISTS', KEYS[1]) == 0
local id = redis.call('XADD', KEYS[1], '*', 'p', ARGV[1], 'k', ARGV[2])
local ms = tonumber(string.match(id, '^(%d+)'))
local mark = nil
if fresh and ms > 0 then
  -- A stream made anew may follow one that expired: whatever came before this event is
  -- unknown, so a position from before it is reported as a gap, never skipped silently.
  mark = int(ms - 1) .. '-0'
end
local age = tonumber(ARGV[4])
trim(id, ms, tonumber(ARGV[3]), age, mark)
redis.call('PEXPIRE', KEYS[1], 2 * age)
redis.call('PUBLISH', KEYS[1], id)
return id
