-- Trimming that leaves a mark. Redis's own trims (XADD MAXLEN, XTRIM) do not move the
-- stream's max-deleted-entry-id (only XDEL does), so a reader could not tell "trimmed away"
-- from "never existed". These trim, then record the largest id removed as the stream's
-- max-deleted-entry-id (XSETID), which read.lua compares a reader's position with.

-- Trims KEYS[1] to `max_len` events and to events no older than `age` ms before `now_ms`;
-- `mark` (or nil) is a deleted id to record anyway. `last` is the stream's last id.
local function trim(last, now_ms, max_len, age, mark)
  local over = redis.call('XLEN', KEYS[1]) - max_len
  if over > 0 then
    local dropped = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', over)
    mark = dropped[#dropped][1]
    redis.call('XTRIM', KEYS[1], 'MAXLEN', '=', max_len)
  end
  local min_id = int(math.max(now_ms - age, 0)) .. '-0'
  local old = redis.call('XREVRANGE', KEYS[1], '(' .. min_id, '-', 'COUNT', 1)
  if #old > 0 then
    -- Newer than anything trimmed by length (those came before what is left).
    mark = old[1][1]
    redis.call('XTRIM', KEYS[1], 'MINID', '=', min_id)
  end
  if mark then
    redis.call('XSETID', KEYS[1], last, 'MAXDELETEDID', mark)
  end
end
