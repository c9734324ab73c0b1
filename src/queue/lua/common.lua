-- Shared by every queue script (prepended after clock.lua). A queue's keys, in this order:
-- KEYS[1..3] ready streams (high, normal, low; consumer group 'g'), KEYS[4] scheduled (zset:
-- id -> due ms), KEYS[5] leases (zset: id -> lease deadline ms), KEYS[6] dead (zset: id -> died
-- at ms), KEYS[7] unique key -> id, KEYS[8] paused flag, KEYS[9] id -> payload, KEYS[10] id ->
-- meta, KEYS[11] id -> last error. KEYS[2] is also the channel waiting workers listen on.
local R = {KEYS[1], KEYS[2], KEYS[3]}
local Z, L, X, U, P, D, M, E = KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11]
local now = store_now()

-- A job's meta: attempts|max attempts|timeout ms|backoff ms|max backoff ms|priority|enqueued
-- ms|due ms|holder|stream entry id|unique key. The holder is set while the job is leased; the
-- stream entry while it is ready or leased (the entry stays pending in the group until then).
local function load(id)
  local s = redis.call('HGET', M, id)
  if not s then return nil end
  local a, m, t, b, bm, p, e, d, h, sid, u = string.match(s,
    '^(%d+)|(%d+)|(%d+)|(%d+)|(%d+)|(%d)|(%d+)|(%d+)|([^|]*)|([^|]*)|(.*)$')
  if not a then return nil end
  return {a = tonumber(a), m = tonumber(m), t = tonumber(t), b = tonumber(b), bm = tonumber(bm),
          p = tonumber(p), e = tonumber(e), d = tonumber(d), h = h, sid = sid, u = u}
end

local function save(id, j)
  redis.call('HSET', M, id, int(j.a) .. '|' .. int(j.m) .. '|' .. int(j.t) .. '|' .. int(j.b) ..
    '|' .. int(j.bm) .. '|' .. int(j.p) .. '|' .. int(j.e) .. '|' .. int(j.d) .. '|' .. j.h ..
    '|' .. j.sid .. '|' .. j.u)
end

-- Appends the job to its priority's ready stream (creating the stream and its group first).
local function make_ready(id, j)
  local key = R[j.p + 1]
  if redis.call('EXISTS', key) == 0 then
    redis.call('XGROUP', 'CREATE', key, 'g', '$', 'MKSTREAM')
  end
  j.sid = redis.call('XADD', key, '*', 'j', id)
  j.h = ''
  save(id, j)
end

-- Takes the job's entry out of its stream (acknowledged in the group, then deleted); an
-- emptied stream is deleted with its group, so a drained queue leaves no keys.
local function unready(j)
  if j.sid ~= '' then
    local key = R[j.p + 1]
    redis.call('XACK', key, 'g', j.sid)
    redis.call('XDEL', key, j.sid)
    if redis.call('XLEN', key) == 0 then
      redis.call('DEL', key)
    end
    j.sid = ''
  end
end

local function release_unique(id, j)
  if j.u ~= '' and redis.call('HGET', U, j.u) == id then
    redis.call('HDEL', U, j.u)
  end
end

-- Deletes the job and everything about it.
local function forget(id, j)
  unready(j)
  redis.call('ZREM', L, id)
  redis.call('ZREM', Z, id)
  redis.call('ZREM', X, id)
  redis.call('HDEL', D, id)
  redis.call('HDEL', M, id)
  redis.call('HDEL', E, id)
  release_unique(id, j)
end

-- The same for an id whose state may be gone (nothing left to unlink but its own fields).
local function forget_id(id)
  forget(id, load(id) or {sid = '', u = ''})
end

-- Dead jobs past their age or beyond their count are deleted (a bounded step per call).
local function prune_dead(max_age, max_count)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', X, '-inf', now - max_age, 'LIMIT', 0, 100)) do
    forget_id(id)
  end
  local over = redis.call('ZCARD', X) - max_count
  if over > 0 then
    for _, id in ipairs(redis.call('ZRANGE', X, 0, math.min(over, 100) - 1)) do
      forget_id(id)
    end
  end
end

-- A queue holding only dead jobs expires with the newest of them (its keys get that TTL), so an
-- abandoned queue leaves nothing behind after its dead-job retention; a live job makes the keys
-- persistent again (persist_all).
local function expire_if_only_dead(max_age)
  local dead = redis.call('ZCARD', X)
  if dead == 0 or redis.call('HLEN', M) > dead then return end
  local newest = redis.call('ZRANGE', X, -1, -1, 'WITHSCORES')
  local ttl = math.max(tonumber(newest[2]) + max_age - now, 1)
  for _, key in ipairs({X, D, M, E}) do
    redis.call('PEXPIRE', key, ttl)
  end
end

-- PTTL is 0 when under a millisecond is left: that TTL too must go, or the live job just
-- written would expire with the dead ones.
local function persist_all()
  if redis.call('PTTL', M) >= 0 then
    for _, key in ipairs({X, D, M, E}) do
      redis.call('PERSIST', key)
    end
  end
end

-- The job is dead: kept with its error until pruned; its unique key is free again.
local function bury(id, j, err, max_age, max_count)
  unready(j)
  redis.call('ZREM', L, id)
  redis.call('ZREM', Z, id)
  j.h = ''
  save(id, j)
  redis.call('HSET', E, id, err)
  redis.call('ZADD', X, now, id)
  release_unique(id, j)
  prune_dead(max_age, max_count)
  expire_if_only_dead(max_age)
end

-- Ready jobs not yet handed out, per stream: its length less its pending entries.
local function ready_in(key)
  if redis.call('EXISTS', key) == 0 then return 0 end
  local pending = redis.call('XPENDING', key, 'g')
  return redis.call('XLEN', key) - tonumber(pending[1])
end
