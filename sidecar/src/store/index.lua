-- index: the index of unwritten changes (common.lua is prepended; see it for
-- sg:{ns}:d and sg:namespaces).
--
-- ARGV[1] op:
--   'register': KEYS[1] sg:namespaces; ARGV[2...] namespaces. Says that
--               this sidecar may add to their sg:{ns}:d: each is stamped
--               now (ms). Reply 1.
--   'scan':     KEYS[1] sg:namespaces; ARGV[2] cursor, ARGV[3] how many to
--               look at. Reply { next cursor ('0': the pass is done),
--               namespace, stamp ms, namespace, stamp ms, ... } (HSCAN:
--               every namespace present for a whole pass is seen in it).
--   'old':      KEYS[1] sg:{ns}:d; ARGV[2] age (ms), ARGV[3] at most how
--               many. Reply { entries in the index, member, ... }: the
--               members whose latest change is older than the age.
--   'written':  KEYS[1] sg:{ns}:d, KEYS[2] the record (sg:{ns}:f:<fp> or
--               sg:{ns}:s); ARGV[2] kind ('f' or 's'), ARGV[3] member
--               (the record's key, or the storm's name), ARGV[4..6] what
--               was written: occurrence count, storm resolved count, 1 if
--               resolved (else 0); ARGV[4] '': the flush found it gone;
--               ARGV[7] dedup ttl, ARGV[8] incident ttl (ms). Removes the
--               member if the store's counters are still the ones written,
--               or its resource is gone (a fingerprint record without a
--               resource of its own, a storm without its start); a
--               fingerprint record then gets its own TTL back (it lived at
--               least the longer of the two TTLs while in the index). Else
--               (counted since) moves its score to now: a live sidecar is
--               writing it. Reply 1 removed, 0 kept.
--   'prune':    KEYS[1] sg:namespaces; ARGV[2] namespace, ARGV[3] age (ms).
--               Removes the namespace if its stamp is older than the age
--               (its index was found empty just before: any sidecar that
--               added to it since stamped it within the age). Reply 1
--               removed, 0 kept.

local op = ARGV[1]
local now = now_ms()

-- Fingerprint record F leaves the index: its own TTL again, as claim.lua
-- sets it after a sighting (ttl_left, from its last sighting or its
-- resolution if later; a pending claim's record at least until its lease
-- ends).
local function own_ttl_again(F)
  local v = redis.call('HMGET', F, 'l', 'y', 'i', 'z', 'p', 'u')
  local left = ttl_left(v[1], v[2], v[3], v[4], tonumber(ARGV[7]), tonumber(ARGV[8]), now)
  if v[5] == '1' then
    left = math.max(left, num(v[6]) - now)
  end
  redis.call('PEXPIRE', F, int(left))
end

if op == 'register' then
  local fields = {}
  for i = 2, #ARGV do
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = int(now)
  end
  if #fields > 0 then
    redis.call('HSET', KEYS[1], unpack(fields))
  end
  return 1
elseif op == 'scan' then
  local found = redis.call('HSCAN', KEYS[1], ARGV[2], 'COUNT', ARGV[3])
  local reply = { found[1] }
  for _, v in ipairs(found[2]) do
    reply[#reply + 1] = v
  end
  return reply
elseif op == 'old' then
  local reply = { redis.call('ZCARD', KEYS[1]) }
  local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]), 'LIMIT', 0, ARGV[3])
  for _, member in ipairs(old) do
    reply[#reply + 1] = member
  end
  return reply
elseif op == 'written' then
  local D, kind, member = KEYS[1], ARGV[2], ARGV[3]
  if not redis.call('ZSCORE', D, member) then
    if kind == 'f' and redis.call('HDEL', KEYS[2], 'd') == 1 then
      -- (the index expired under it: its next change adds it again)
      own_ttl_again(KEYS[2])
    end
    return 0
  end
  local v, same
  if kind == 'f' then
    v = redis.call('HMGET', KEYS[2], 'r', 'c', 'z')
    same = ARGV[4] ~= '' and num(v[2]) == tonumber(ARGV[4]) and (num(v[3]) ~= 0) == (ARGV[6] == '1')
  else
    v = redis.call('HMGET', KEYS[2], member .. '|f', member .. '|c', member .. '|r', member .. '|z')
    same = ARGV[4] ~= '' and num(v[2]) == tonumber(ARGV[4]) and num(v[3]) == tonumber(ARGV[5])
      and (num(v[4]) ~= 0) == (ARGV[6] == '1')
  end
  if not v[1] or same then
    redis.call('ZREM', D, member)
    if kind == 'f' and v[1] then
      redis.call('HDEL', KEYS[2], 'd')
      own_ttl_again(KEYS[2])
    end
    return 1
  end
  redis.call('ZADD', D, 'XX', now, member)
  return 0
elseif op == 'prune' then
  local stamp = tonumber(redis.call('HGET', KEYS[1], ARGV[2]))
  if stamp and stamp < now - tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[1], ARGV[2])
    return 1
  end
  return 0
end
return redis.error_reply('unknown op ' .. tostring(op))
