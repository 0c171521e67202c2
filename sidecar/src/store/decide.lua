-- decide: one signal, one atomic step (common.lua is prepended).
--
-- KEYS[1] sg:{ns}:f:<fp>   KEYS[2] sg:{ns}:w   KEYS[3] sg:{ns}:s
-- KEYS[4] sg:{ns}:a        KEYS[5] sg:{ns}:x   KEYS[6] sg:{ns}:m (warm marker:
-- when the store's memory of this namespace began; kept alive by every
-- decide for the dedup TTL)
-- ARGV: 1 fingerprint, 2 affected, 3 storm name prefix
--       ('storm-<12 hex of sha256(ns)>-'), 4 dedup ttl ms, 5 storm threshold,
--       6 storm window ms, 7 storm max duration ms, 8 max affected,
--       9 claim lease ms
-- Reply: { outcome (1 created, 2 duplicate, 3 storm_started,
--          4 storm_aggregated), write (1 create, 2 update, 3 await),
--          kind (0 fingerprint, 1 storm), resource name, first seen ms,
--          last seen ms, occurrence count, alert count, affected overflow,
--          storm started ms, cold (1 while the store's memory of the
--          namespace is younger than the dedup window) }

local F, W, S, A, X, M = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local fp, affected, storm_prefix = ARGV[1], ARGV[2], ARGV[3]
local dedup = tonumber(ARGV[4])
local threshold = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local max_duration = tonumber(ARGV[7])
local max_affected = tonumber(ARGV[8])
local lease = tonumber(ARGV[9])
local now = now_ms()
local since = tonumber(redis.call('GET', M))
if since then
  redis.call('PEXPIRE', M, ARGV[4])
else
  since = now
  redis.call('SET', M, int(now), 'PX', ARGV[4])
end
local cold = 0
if now - since < tonumber(ARGV[4]) then
  cold = 1
end

local function storm_reply(outcome, write, st)
  return { outcome, write, 1, st.name, st.f, st.l, st.c, st.n, st.o, st.f, cold }
end

-- Counts one more signal in storm `st` and settles its claim.
local function storm_count(st)
  st.c = redis.call('HINCRBY', S, st.name .. '|c', 1)
  st.l = now
  local write, lease_until = claim_write(st.p, st.u, now, lease)
  st.u = lease_until
  redis.call('HSET', S, st.name .. '|l', now, st.name .. '|u', lease_until)
  return write
end

local function add_affected(st)
  if affected == '' then
    return
  end
  local member = st.name .. '|' .. affected
  if redis.call('ZSCORE', A, member) then
    return
  end
  if st.k < max_affected then
    redis.call('ZADD', A, 0, member)
    st.k = redis.call('HINCRBY', S, st.name .. '|k', 1)
  else
    st.o = redis.call('HINCRBY', S, st.name .. '|o', 1)
  end
end

-- The record must outlive its members' keys, the storm itself and the lease.
local function keep(st)
  storm_keep(S, A, X, st.name, math.max(now + dedup, st.e, st.u), now)
end

local function join_storm(name)
  redis.call('DEL', F)
  redis.call('HSET', F, 's', name)
  redis.call('PEXPIRE', F, int(dedup))
end

local known = redis.call('HMGET', F, 'r', 'f', 'c', 'p', 'u', 's')

if known[6] then
  -- A storm member: repeats are duplicates of the storm resource.
  local st = storm_load(S, known[6])
  if st then
    local write = storm_count(st)
    redis.call('PEXPIRE', F, int(dedup))
    keep(st)
    return storm_reply(2, write, st)
  end
  -- The storm record is gone: the signal is new again.
  redis.call('DEL', F)
elseif known[1] then
  -- A known fingerprint with its own resource.
  local count = redis.call('HINCRBY', F, 'c', 1)
  local write, lease_until = claim_write(num(known[4]), num(known[5]), now, lease)
  redis.call('HSET', F, 'l', now, 'u', lease_until)
  local ttl = dedup
  if num(known[4]) == 1 and lease_until - now > ttl then
    ttl = lease_until - now
  end
  redis.call('PEXPIRE', F, int(ttl))
  return { 2, write, 0, known[1], num(known[2]), now, count, 0, 0, 0, cold }
end

-- A new fingerprint. Does a storm run in this namespace?
local cur = redis.call('HGET', S, 'cur')
if cur then
  local st = storm_load(S, cur)
  if st and st.e > now then
    st.n = redis.call('HINCRBY', S, cur .. '|n', 1)
    local write = storm_count(st)
    local ends = math.min(now + window, st.f + max_duration)
    if ends > st.e then
      st.e = ends
      redis.call('HSET', S, cur .. '|e', ends)
    end
    add_affected(st)
    join_storm(cur)
    keep(st)
    return storm_reply(4, write, st)
  end
end

-- Count it in the window; the first `threshold` are created individually.
redis.call('ZREMRANGEBYSCORE', W, '-inf', now - window)
if redis.call('ZCARD', W) < threshold then
  redis.call('ZADD', W, now, fp)
  redis.call('PEXPIRE', W, int(window))
  local name = 'rr-' .. string.sub(fp, 1, 16) .. '-' .. base36(now)
  redis.call('DEL', F)
  redis.call('HSET', F, 'r', name, 'f', now, 'l', now, 'c', 1, 'p', 1, 'u', now + lease)
  redis.call('PEXPIRE', F, int(math.max(dedup, lease)))
  return { 1, 1, 0, name, now, now, 1, 0, 0, 0, cold }
end

-- The (threshold+1)-th: a new storm, ONE resource.
local name = storm_prefix .. base36(now)
local st = {
  name = name, f = now, l = now, c = 1, n = 1,
  e = math.min(now + window, now + max_duration),
  p = 1, u = now + lease, o = 0, k = 0,
}
storm_drop(S, A, X, name)
redis.call('HSET', S, 'cur', name,
  name .. '|f', st.f, name .. '|l', st.l, name .. '|c', st.c, name .. '|n', st.n,
  name .. '|e', st.e, name .. '|p', st.p, name .. '|u', st.u, name .. '|o', 0,
  name .. '|k', 0)
add_affected(st)
join_storm(name)
keep(st)
return storm_reply(3, 1, st)
