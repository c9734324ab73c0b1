-- All-or-nothing rate-limit check. Mirrors src/ratelimit/algorithm.rs line for line: integer
-- math on doubles, exact because policies keep every product below 2^52.
-- KEYS[i]  counter i (a hash: a, b, c = the three state integers)
-- ARGV[1] now (ms), ARGV[2] cost, ARGV[3] commit ('1': consume when every check allows)
-- ARGV[4 + 4(i-1) ..]: algorithm code, limit, period ms, capacity of counter i
-- Returns per counter: allowed (0/1), remaining, reset_after ms, retry_after ms.
-- Algorithm codes: 1 fixed window, 2 sliding window, 3 token bucket, 4 GCRA.

local function int(n)
  return string.format('%d', n)
end

local function ceil_div(a, b)
  return math.floor((a + b - 1) / b)
end

local function decide(alg, l, p, cap, s0, s1, s2, now, cost)
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
    if s2 == 1 then ahead = math.max((s0 - now) * l + s1, 0) end
    local next = ahead + cost * p
    local allowed = next <= tolerance
    local after = ahead
    if allowed then after = next end
    local reset = ceil_div(after, l)
    local retry = 0
    if not allowed then retry = ceil_div(next - tolerance, l) end
    local q = math.floor(after / l)
    return allowed, math.max(math.floor((tolerance - after) / p), 0), reset, retry,
      now + q, after - q * l, 1, math.max(reset, 1)
  end
end

local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local out = {}
local writes = {}
local all = true
for i = 1, #KEYS do
  local base = 3 + (i - 1) * 4
  local st = redis.call('HMGET', KEYS[i], 'a', 'b', 'c')
  local allowed, remaining, reset, retry, n0, n1, n2, ttl = decide(
    tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]),
    tonumber(ARGV[base + 4]), tonumber(st[1]) or 0, tonumber(st[2]) or 0, tonumber(st[3]) or 0,
    now, cost)
  all = all and allowed
  local flag = 0
  if allowed then flag = 1 end
  out[#out + 1] = flag
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
  writes[i] = {int(n0), int(n1), int(n2), int(ttl)}
end
if all and ARGV[3] == '1' then
  for i = 1, #KEYS do
    local w = writes[i]
    redis.call('HSET', KEYS[i], 'a', w[1], 'b', w[2], 'c', w[3])
    redis.call('PEXPIRE', KEYS[i], w[4])
  end
end
return out
