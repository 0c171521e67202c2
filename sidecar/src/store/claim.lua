-- claim: commit, release or poll one claim (common.lua is prepended).
--
-- A fingerprint claim: KEYS[1] sg:{ns}:f:<fp>.
-- A storm claim:       KEYS[1] sg:{ns}:s, KEYS[2] sg:{ns}:a, KEYS[3] sg:{ns}:x.
-- ARGV: 1 op ('commit', 'release', 'poll', 'adopt'), 2 kind ('f' or 's'),
--       3 storm resource name (storm claims), 4 claim lease ms, 5 dedup ttl ms;
--       adopt (fingerprint claims only): 6 resource name, 7 first seen ms,
--       8 occurrence count of the existing resource
-- Reply: commit and release: 1 done, 0 the claim is gone.
--        adopt: { name, first seen ms, last seen ms, count }, or 0 if gone.
--        poll: 0 gone, 1 committed, 2 pending (live lease), 3 owned (the lease
--        had expired: the caller now holds a fresh one).

local op, kind, name = ARGV[1], ARGV[2], ARGV[3]
local lease = tonumber(ARGV[4])
local dedup = tonumber(ARGV[5])
local now = now_ms()

if kind == 'f' then
  local F = KEYS[1]
  local v = redis.call('HMGET', F, 'r', 'l', 'p', 'u')
  if not v[1] then
    return 0
  end
  local pending, lease_until = num(v[3]), num(v[4])
  if op == 'adopt' then
    local c = redis.call('HINCRBY', F, 'c', tonumber(ARGV[8]))
    redis.call('HSET', F, 'r', ARGV[6], 'f', ARGV[7], 'p', 0)
    redis.call('PEXPIRE', F, int(math.max(1, num(v[2]) + dedup - now)))
    return { ARGV[6], tonumber(ARGV[7]), num(v[2]), c }
  end
  if op == 'commit' then
    if pending == 1 then
      redis.call('HSET', F, 'p', 0)
      -- The lease no longer keeps it: the dedup window from the last sighting does.
      redis.call('PEXPIRE', F, int(math.max(1, num(v[2]) + dedup - now)))
    end
    return 1
  elseif op == 'release' then
    if pending == 1 then
      redis.call('HSET', F, 'u', 0)
    end
    return 1
  end
  if pending == 0 then
    return 1
  end
  if lease_until > now then
    return 2
  end
  redis.call('HSET', F, 'u', now + lease)
  if redis.call('PTTL', F) < lease then
    redis.call('PEXPIRE', F, int(lease))
  end
  return 3
end

local S, A, X = KEYS[1], KEYS[2], KEYS[3]
local v = redis.call('HMGET', S, name .. '|f', name .. '|p', name .. '|u')
if not v[1] then
  return 0
end
local pending, lease_until = num(v[2]), num(v[3])
if op == 'commit' then
  if pending == 1 then
    redis.call('HSET', S, name .. '|p', 0)
  end
  return 1
elseif op == 'release' then
  if pending == 1 then
    redis.call('HSET', S, name .. '|u', 0)
  end
  return 1
end
if pending == 0 then
  return 1
end
if lease_until > now then
  return 2
end
redis.call('HSET', S, name .. '|u', now + lease)
storm_keep(S, A, X, name, now + lease, now)
return 3
