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
--               resolved (else 0); ARGV[4] '': the flush found it gone.
--               Removes the member if the store's counters are still the
--               ones written, or its resource is gone (a fingerprint record
--               without a resource of its own, a storm without its start);
--               else (counted since) moves its score to now: a live sidecar
--               is writing it. Reply 1 removed, 0 kept.
--   'keep':     KEYS[1] sg:{ns}:f:<fp>, KEYS[2] sg:{ns}:d; ARGV[2] dedup
--               ttl (ms). The sink refused the update of its resource: a
--               record of an own resource is kept at least that long from
--               now, and so is the index. Reply 1.
--   'prune':    KEYS[1] sg:namespaces; ARGV[2] namespace, ARGV[3] age (ms).
--               Removes the namespace if its stamp is older than the age
--               (its index was found empty just before: any sidecar that
--               added to it since stamped it within the age). Reply 1
--               removed, 0 kept.

local op = ARGV[1]
local now = now_ms()

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
    if kind == 'f' then
      -- (the index expired under it: its next change adds it again)
      redis.call('HDEL', KEYS[2], 'd')
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
    end
    return 1
  end
  redis.call('ZADD', D, 'XX', now, member)
  return 0
elseif op == 'keep' then
  if redis.call('HEXISTS', KEYS[1], 'r') == 1 then
    for _, key in ipairs(KEYS) do
      if redis.call('PTTL', key) < tonumber(ARGV[2]) then
        redis.call('PEXPIRE', key, ARGV[2])
      end
    end
  end
  return 1
elseif op == 'prune' then
  local stamp = tonumber(redis.call('HGET', KEYS[1], ARGV[2]))
  if stamp and stamp < now - tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[1], ARGV[2])
    return 1
  end
  return 0
end
return redis.error_reply('unknown op ' .. tostring(op))
