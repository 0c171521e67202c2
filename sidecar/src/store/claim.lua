-- claim: commit, release or poll one claim (common.lua is prepended).
--
-- A fingerprint claim: KEYS[1] sg:{ns}:f:<fp>.
-- A storm claim:       KEYS[1] sg:{ns}:s, KEYS[2] sg:{ns}:a, KEYS[3] sg:{ns}:x.
-- ARGV: 1 op ('commit', 'release', 'poll', 'adopt', 'forget'), 2 kind ('f'
--       or 's'), 3 storm resource name (storm claims), 4 claim lease ms, 5
--       dedup ttl ms; commit: 6 the namespace the resource went to if not
--       its own (else ''); adopt of a fingerprint: 6 resource name, 7 first
--       seen ms, 8 occurrence count of the existing resource, 9 the
--       namespace it is in if not its own (else ''); adopt of a storm: 6
--       started ms, 7 last seen ms, 8 occurrence count, 9 alert count, 10
--       affected overflow, 11 ends ms, 12 max affected, 13 the namespace it
--       is in if not its own (else ''), 14... its affected values; forget:
--       6 the resource name the sink no longer has
-- Reply: commit and release: 1 done, 0 the claim is gone.
--        forget: 1 forgotten, 0 left (gone, pending, or another resource).
--        adopt: { resource (name, or '<namespace>/<name>' when it went to
--        another namespace), first seen ms, last seen ms, count, write (2
--        update; a claim another request made first: 3 await, 1 create,
--        its lease having expired) }, or 0 if the
--        fingerprint has joined a storm meanwhile; of a storm: 1 adopted,
--        0 not (it has ended, or the namespace runs another storm).
--        poll: 0 gone, { 1, the namespace the resource went to if not its
--        own (else '') } committed, 2 pending (live lease), 3 owned (the
--        lease had expired: the caller now holds a fresh one).

local op, kind, name = ARGV[1], ARGV[2], ARGV[3]
local lease = tonumber(ARGV[4])
local dedup = tonumber(ARGV[5])
local now = now_ms()

-- Where the claim's fields live: a fingerprint claim in its own hash (it
-- exists while it has a resource name 'r'), a storm claim as '<name>|<field>'
-- in the namespace's storm hash (it exists while it has a start '<name>|f').
local H, prefix, exists = KEYS[1], '', 'r'

-- adopt: a lookup found the incident's resource in the sink. Record it as
-- the fingerprint's committed resource, counting this signal; or, if the
-- fingerprint is known by now (another request adopted or created it
-- first), count the signal in what the store holds.
-- adopt of a storm: a lookup found the namespace's running storm resource
-- in the sink (the store lost it, or holds an older state of it). It
-- becomes the running storm again, so new signals join it rather than start
-- another, unless the store runs a storm of its own. What the store still
-- holds of it is merged (each counter and its end: the larger).
if op == 'adopt' and kind == 's' then
  local S, A, X = KEYS[1], KEYS[2], KEYS[3]
  local e = tonumber(ARGV[11])
  if e <= now then
    return 0
  end
  local cur = redis.call('HGET', S, 'cur')
  if cur and cur ~= name then
    local st = storm_live(S, X, cur, now)
    if st and st.e > now then
      return 0
    end
  end
  -- What the store holds of it, unless its time is up (as decide.lua sees it).
  local st = storm_live(S, X, name, now)
  if not st then
    storm_drop(S, A, X, name)
    st = { f = tonumber(ARGV[6]), l = 0, c = 0, n = 0, o = 0, k = 0, e = 0 }
  end
  st.l = math.max(st.l, tonumber(ARGV[7]))
  st.c = math.max(st.c, tonumber(ARGV[8]))
  st.n = math.max(st.n, tonumber(ARGV[9]))
  st.o = math.max(st.o, tonumber(ARGV[10]))
  st.e = math.max(st.e, e)
  local max_affected = tonumber(ARGV[12])
  for i = 14, #ARGV do
    if st.k < max_affected and redis.call('ZADD', A, 'NX', 0, name .. '|' .. ARGV[i]) == 1 then
      st.k = st.k + 1
    end
  end
  redis.call('HSET', S, name .. '|f', int(st.f), name .. '|l', int(st.l), name .. '|c', int(st.c),
    name .. '|n', int(st.n), name .. '|e', int(st.e), name .. '|p', 0, name .. '|u', 0,
    name .. '|o', int(st.o), name .. '|k', int(st.k), 'cur', name)
  if ARGV[13] ~= '' then
    redis.call('HSET', S, name .. '|w', ARGV[13])
  end
  storm_keep(S, A, X, { { name, math.max(now + dedup, st.e) } }, now)
  return 1
end

if op == 'adopt' then
  local known = redis.call('HMGET', H, 'r', 'f', 's', 'p', 'u')
  if known[3] then
    return 0
  end
  local resource, first, c, moved = known[1], num(known[2]), 0, committed_to(known[4])
  local write, keep = 2, dedup
  if resource then
    -- Another request's claim, maybe still pending: settled as decide.lua
    -- would settle a duplicate of it (wait for it, or take it over).
    c = redis.call('HINCRBY', H, 'c', 1)
    local lease_until
    write, lease_until = claim_write(num(known[4]), num(known[5]), now, lease)
    redis.call('HSET', H, 'l', int(now), 'u', int(lease_until))
    if write ~= 2 then
      keep = math.max(dedup, lease_until - now)
    end
  else
    resource, first, c, moved = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8]) + 1, ARGV[9]
    redis.call('HSET', H, 'r', resource, 'f', int(first), 'l', int(now), 'c', int(c),
      'p', committed_p(moved), 'u', 0)
  end
  if redis.call('PTTL', H) < keep then
    redis.call('PEXPIRE', H, int(keep))
  end
  return { resource_ref(resource, moved), first, now, c, write }
end

if kind == 's' then
  prefix = name .. '|'
  exists = prefix .. 'f'
end
local v = redis.call('HMGET', H, exists, prefix .. 'l', prefix .. 'p', prefix .. 'u', prefix .. 'w')
if not v[1] then
  return 0
end
local last, pending, lease_until = num(v[2]), num(v[3]), num(v[4])

-- A fingerprint claim no longer held by a lease lives for the dedup window
-- from its last sighting.
local function expire_after_last_sighting()
  redis.call('PEXPIRE', H, int(math.max(1, last + dedup - now)))
end

if op == 'commit' then
  if pending == 1 then
    if kind == 'f' then
      redis.call('HSET', H, 'p', committed_p(ARGV[6]))
      expire_after_last_sighting()
    else
      redis.call('HSET', H, prefix .. 'p', 0)
      if ARGV[6] ~= '' then
        redis.call('HSET', H, prefix .. 'w', ARGV[6])
      end
    end
  end
  return 1
elseif op == 'forget' then
  if pending == 1 then
    return 0
  end
  if kind == 'f' then
    if v[1] ~= ARGV[6] then
      return 0
    end
    redis.call('DEL', H)
  else
    storm_drop(KEYS[1], KEYS[2], KEYS[3], name)
  end
  return 1
elseif op == 'release' then
  if pending == 1 then
    redis.call('HSET', H, prefix .. 'u', 0)
  end
  return 1
end

-- poll
if pending == 0 then
  if kind == 'f' then
    return { 1, committed_to(v[3]) }
  end
  return { 1, v[5] or '' }
end
if lease_until > now then
  return 2
end
-- The lease had expired: the caller takes the claim, and its record must
-- outlive the new lease.
redis.call('HSET', H, prefix .. 'u', now + lease)
if kind == 'f' then
  if redis.call('PTTL', H) < lease then
    redis.call('PEXPIRE', H, int(lease))
  end
else
  storm_keep(KEYS[1], KEYS[2], KEYS[3], { { name, now + lease } }, now)
end
return 3
