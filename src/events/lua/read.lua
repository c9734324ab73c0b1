-- Events of a topic after a position, with what tells whether some after it were trimmed.
-- KEYS[1] stream; ARGV[1] position (exclusive), ARGV[2] most events
-- Returns {} when the topic holds nothing; else {largest id trimmed away ('0-0': none),
-- oldest id kept ('' if none), last id given out, {{id, {field, value, ...}}, ...}}.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local trimmed, first, last = '0-0', '', '0-0'
for i = 1, #info, 2 do
  local k = info[i]
  if k == 'max-deleted-entry-id' then
    trimmed = info[i + 1]
  elseif k == 'last-generated-id' then
    last = info[i + 1]
  elseif k == 'first-entry' and type(info[i + 1]) == 'table' then
    first = info[i + 1][1]
  end
end
return {trimmed, first, last, redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
