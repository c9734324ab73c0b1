-- The four rate-limit algorithms and the all-or-nothing check over several counters.
-- Mirrors src/ratelimit/algorithm.rs line for line: integer math on doubles, exact because
-- policies keep every product below 2^52. Prepended (after the store clock) to check.lua, and
-- to the parity tests' driver, which calls run_check with chosen times.
-- Algorithm codes: 1 fixed window, 2 sliding window, 3 token bucket, 4 GCRA.

local function ceil_div(a, b)
  return math.floor((a + b - 1) / b)
end

-- decide at a time no earlier than the state's
local function decide_at(alg, l, p, cap, s0, s1, s2, now, cost)
  -- returns allowed, remaining, reset, retry, n0, n1, n2, ttl
  if alg == 1 then
    local w = math.floor(now / p)
    local count = 0
    if s0 == w then count = s1 end
    local reset = (w + 1) * p - now
    local allowed = count + cost <= l
    local after = count
    if allowed then after = count + cost end
    local retry = reset
    if allowed then retry = 0 end
    return allowed, math.max(l - after, 0), reset, retry, w, after, 0, math.max(reset, 1)
  elseif alg == 2 then
    local w = math.floor(now / p)
    local e = now - w * p
    local prev, curr = 0, 0
    if s0 == w then
      prev, curr = s2, s1
    elseif s0 == w - 1 then
      prev, curr = s1, 0
    end
    local estimate = prev * (p - e) + curr * p
    local allowed = estimate + cost * p <= l * p
    local after, curr_after = estimate, curr
    if allowed then
      after = estimate + cost * p
      curr_after = curr + cost
    end
    local reset = p - e
    if curr_after > 0 then reset = 2 * p - e end
    local retry = 0
    if not allowed then
      local found = false
      local room = (l - curr - cost) * p
      if room >= 0 and prev > 0 then
        local t = math.max(ceil_div(prev * (p - e) - room, prev), 0)
        if t < p - e then
          retry = t
          found = true
        end
      end
      if not found then
        local room2 = (l - cost) * p
        local t = 0
        if curr > 0 then t = math.max(ceil_div(curr * p - room2, curr), 0) end
        retry = (p - e) + t
      end
    end
    return allowed, math.max(math.floor((l * p - after) / p), 0), reset, retry,
      w, curr_after, prev, math.max(2 * p - e, 1)
  elseif alg == 3 then
    local full = cap * p
    local tokens, last = full, now
    if s2 == 1 then tokens, last = s0, s1 end
    local idle = math.min(math.max(now - last, 0), ceil_div(full, l))
    tokens = math.min(tokens + idle * l, full)
    local need = cost * p
    local allowed = tokens >= need
    local after = tokens
    if allowed then after = tokens - need end
    local reset = ceil_div(full - after, l)
    local retry = 0
    if not allowed then retry = ceil_div(need - tokens, l) end
    return allowed, math.floor(after / p), reset, retry, after, now, 1, math.max(reset, 1)
  else
    local tolerance = cap * p
    local ahead = 0
    if s2 >= 1 then ahead = math.max((s0 - now) * l + s1, 0) end
    local next = ahead + cost * p
    local allowed = next <= tolerance
    local after = ahead
    if allowed then after = next end
    local reset = ceil_div(after, l)
    local retry = 0
    if not allowed then retry = ceil_div(next - tolerance, l) end
    local q = math.floor(after / l)
    return allowed, math.max(math.floor((tolerance - after) / p), 0), reset, retry,
      now + q, after - q * l, math.max(now, 1), math.max(reset, 1)
  end
end

local function decide(alg, l, p, cap, s0, s1, s2, now, cost)
  -- Monotonic time: never earlier than the time the state was written at.
  local at = now
  if alg == 1 or alg == 2 then
    at = math.max(now, s0 * p)
  elseif alg == 3 and s2 == 1 then
    at = math.max(now, s1)
  elseif alg == 4 then
    at = math.max(now, s2)
  end
  local allowed, remaining, reset, retry, n0, n1, n2, ttl =
    decide_at(alg, l, p, cap, s0, s1, s2, at, cost)
  -- Durations count from the store's reading, `now`: what is due at `at` is that much further.
  -- Counters are kept STEP_MARGIN_MS (1000) beyond their use (see algorithm.rs).
  local shift = at - now
  if retry > 0 then retry = retry + shift end
  return allowed, remaining, reset + shift, retry, n0, n1, n2, ttl + shift + 1000
end

-- Decides every counter at `now` and, when the request is admitted and ARGV[1] is '1',
-- consumes from every counter that allows it (see `admits` in src/ratelimit/model.rs).
-- KEYS[i]  counter i (a hash: a, b, c = the three state integers)
-- ARGV[1] commit ('1' or '0'),
-- ARGV[2 + 6(i-1) ..]: algorithm code, limit, period ms, capacity, cost and role of counter i.
-- Roles: 0 enforced (must allow), 1 quota (at least one quota counter of the request must
-- allow), 2 shadow (never decides). A request is admitted when every enforced counter allows and,
-- if it has quota counters, one of them does; then each counter that allows is written (a cost
-- of 0 records only the clock reading), the others are not. Denied requests write nothing.
-- Returns per counter: allowed (0/1), remaining, reset_after ms, retry_after ms, and with
-- `windows` (a reservation, reserve.lua) two more: what refund.lua needs to take the
-- consumption back. Fixed and sliding window: the window decided in, and 0. Token bucket: the
-- tokens left after it and the time they were counted at. GCRA: how far ahead the schedule was
-- after it, and that time. A reservation decides its slot alone: it writes when the slot's
-- enforced counters allow (the quota rule needs every slot, so the caller applies it and refunds).
local function run_check(now, windows)
  local out = {}
  local writes = {}
  local enforced_ok, quotas, quota_ok = true, 0, false
  for i = 1, #KEYS do
    local base = 1 + (i - 1) * 6
    local st = redis.call('HMGET', KEYS[i], 'a', 'b', 'c')
    local cost, role = tonumber(ARGV[base + 5]), tonumber(ARGV[base + 6])
    local allowed, remaining, reset, retry, n0, n1, n2, ttl = decide(
      tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]),
      tonumber(ARGV[base + 4]), tonumber(st[1]) or 0, tonumber(st[2]) or 0, tonumber(st[3]) or 0,
      now, cost)
    if role == 0 then
      enforced_ok = enforced_ok and allowed
    elseif role == 1 then
      quotas = quotas + 1
      quota_ok = quota_ok or allowed
    end
    local flag = 0
    if allowed then flag = 1 end
    out[#out + 1] = flag
    out[#out + 1] = remaining
    out[#out + 1] = reset
    out[#out + 1] = retry
    if windows then
      local alg, l = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
      if alg == 1 or alg == 2 then
        out[#out + 1] = int(n0)
        out[#out + 1] = 0
      elseif alg == 3 then
        out[#out + 1] = int(n0)
        out[#out + 1] = int(n1)
      else
        out[#out + 1] = int((n0 - n2) * l + n1)
        out[#out + 1] = int(n2)
      end
    end
    if allowed then
      writes[i] = {int(n0), int(n1), int(n2), int(ttl)}
    end
  end
  local admitted = enforced_ok
  if not windows and quotas > 0 then admitted = admitted and quota_ok end
  if admitted and ARGV[1] == '1' then
    for i = 1, #KEYS do
      local w = writes[i]
      if w then
        redis.call('HSET', KEYS[i], 'a', w[1], 'b', w[2], 'c', w[3])
        redis.call('PEXPIRE', KEYS[i], w[4])
      end
    end
  end
  return out
end

-- Takes back what a reservation (reserve.lua) consumed, when the reservation's other slots
-- denied, without ever giving back more than the reservation still holds: other callers may
-- have come and gone since, and a bucket may have refilled to the top meanwhile (the top caps
-- what the reservation kept out, so it can never be given back whole).
-- KEYS[i] counter i;
-- ARGV[1 + 7(i-1) ..]: algorithm code, limit, period ms, capacity, cost, and the two values
-- reserve.lua returned for the counter.
-- - fixed window: the cost comes off the count if the window is the same;
-- - sliding window: off the current window's count, or off the previous one's if the window
--   moved on by one (the estimate weighs it the same way);
-- - token bucket: the tokens the reservation still keeps out: the cost, less what the bucket
--   would have refilled beyond its capacity since (had the tokens not been taken);
-- - GCRA: the part of the reservation's increment the schedule has not yet drained.
-- A counter that expired meanwhile has nothing to give back.
-- Returns the number of counters it gave back to.
local function run_refund(now)
  local given = 0
  for i = 1, #KEYS do
    local base = (i - 1) * 7
    local alg, l, p, cap = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]),
      tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
    local cost = tonumber(ARGV[base + 5])
    local v1, v2 = tonumber(ARGV[base + 6]), tonumber(ARGV[base + 7])
    local st = redis.call('HMGET', KEYS[i], 'a', 'b', 'c')
    if st[1] then
      local s0, s1, s2 = tonumber(st[1]) or 0, tonumber(st[2]) or 0, tonumber(st[3]) or 0
      if alg == 1 then
        if s0 == v1 then
          redis.call('HSET', KEYS[i], 'b', int(math.max(s1 - cost, 0)))
          given = given + 1
        end
      elseif alg == 2 then
        if s0 == v1 then
          redis.call('HSET', KEYS[i], 'b', int(math.max(s1 - cost, 0)))
          given = given + 1
        elseif s0 == v1 + 1 then
          redis.call('HSET', KEYS[i], 'c', int(math.max(s2 - cost, 0)))
          given = given + 1
        end
      elseif alg == 3 then
        if s2 == 1 then
          local full = cap * p
          local elapsed = math.max(math.max(now, s1) - v2, 0)
          local back = math.min(cost * p, math.max(full - (v1 + elapsed * l), 0))
          if back > 0 then
            redis.call('HSET', KEYS[i], 'a', int(math.min(s0 + back, full)))
            given = given + 1
          end
        end
      else
        if s2 >= 1 then
          local at = math.max(now, s2)
          local back = math.min(cost * p, math.max(v1 - math.max(at - v2, 0) * l, 0))
          if back > 0 then
            local ahead = math.max((s0 - at) * l + s1, 0)
            local after = math.max(ahead - back, 0)
            local q = math.floor(after / l)
            redis.call('HSET', KEYS[i], 'a', int(at + q), 'b', int(after - q * l),
              'c', int(math.max(at, 1)))
            given = given + 1
          end
        end
      end
    end
  end
  return given
end
