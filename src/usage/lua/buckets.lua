-- Time buckets on the store's clock (after clock.lua). Mirrors src/usage/model.rs: minutes,
-- hours and days are counted from the Unix epoch; months are calendar months (UTC), numbered
-- year * 12 + month - 1, from Howard Hinnant's civil-date algorithms.

local function civil_from_days(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local m = mp + 3
  if mp >= 10 then m = mp - 9 end
  if m <= 2 then y = y + 1 end
  return y, m
end

local function days_from_civil(y, m)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m + 9
  if m > 2 then mp = m - 3 end
  local doy = math.floor((153 * mp + 2) / 5)
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local DAY = 86400000
local GRANULARITIES = {'m', 'h', 'd', 'M'}

-- The bucket holding `now` for granularity `g`, and when it ends (ms).
local function bucket(g, now)
  if g == 'm' then
    local i = math.floor(now / 60000)
    return i, (i + 1) * 60000
  elseif g == 'h' then
    local i = math.floor(now / 3600000)
    return i, (i + 1) * 3600000
  elseif g == 'd' then
    local i = math.floor(now / DAY)
    return i, (i + 1) * DAY
  end
  local y, m = civil_from_days(math.floor(now / DAY))
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return y * 12 + m - 1, days_from_civil(ny, nm) * DAY
end
