-- claim: commit, release or poll one claim (common.lua is prepended).
--
-- A fingerprint claim: KEYS[1] sg:{ns}:f:<fp> (adopt: KEYS[2] sg:{ns}:d;
--                      uncount: KEYS[2] sg:{ns}:s, KEYS[3] sg:{ns}:d).
-- A storm claim:       KEYS[1] sg:{ns}:s, KEYS[2] sg:{ns}:a, KEYS[3] sg:{ns}:x
--                      (member: KEYS[4] sg:{ns}:f:<fp>, KEYS[5] sg:{ns}:d).
-- The ops that change a resource's counters (adopt of a fingerprint,
-- member, uncount) add it to the index of unwritten changes (sg:{ns}:d).
-- ARGV: 1 op ('commit', 'release', 'poll', 'adopt', 'member', 'forget',
--       'uncount'), 2
--       kind ('f' or 's'), 3 storm resource name (storm claims), 4 claim lease ms, 5
--       dedup ttl ms, 6 incident ttl ms, 7 the caller's token (commit and
--       release act only on a pending claim it owns; a claim poll or adopt
--       hands it records it), for adopt and member followed by
--       ':<delivery token of its window>:<of the window before>' (see
--       count_in()); commit: 8 the namespace the resource went to
--       if not its own (else ''); adopt of a fingerprint: 8 resource name, 9
--       first seen ms, 10 occurrence count of the existing resource, 11 the
--       namespace it is in if not its own (else ''), 12 its firing instance
--       ms (0 unknown), 13 its firings, 14 and 15 its resolution (resolved
--       ms, received ms; 0 0 open), 16 the claim's firing instance ms, 17
--       '1' to absorb the claim's firing into it as a new firing instance
--       (else '0'); adopt of a storm: 8 started ms, 9 last seen ms, 10
--       occurrence count, 11 alert count, 12 affected overflow, 13 ends ms,
--       14 max affected, 15 the namespace it is in if not its own (else
--       ''), 16 resolved count, 17 the storm it continues (else ''), 18...
--       its affected values; forget: 8 the resource name the sink no longer
--       has
-- Reply: commit and release: 1 done, 0 the claim is gone or another
--        request's (its lease ran out and another took it over).
--        forget: 1 forgotten, 0 left (gone, pending, or another resource).
--        uncount: 1 taken back, 0 not the caller's count.
--        adopt: { resource (name, or '<namespace>/<name>' when it went to
--        another namespace), first seen ms, last seen ms, count, write (2
--        update; a claim another request made first: 3 await, 1 create,
--        its lease having expired), instance ms, firings, resolved ms,
--        resolution received ms (0 0 open) }, or 0 if the fingerprint has
--        joined a storm meanwhile; of a storm: 1 adopted, 0 not (it has
--        ended, or the namespace runs another storm).
--        poll: 0 gone, { 1, the namespace the resource went to if not its
--        own (else '') } committed, 2 pending (live lease), 3 owned (the
--        lease had expired: the caller now holds a fresh one).

local op, kind, name = ARGV[1], ARGV[2], ARGV[3]
local lease = tonumber(ARGV[4])
local dedup = tonumber(ARGV[5])
local incident = tonumber(ARGV[6])
local owner, dc, dp = string.match(ARGV[7], '^([^:]*):?([^:]*):?([^:]*)$')
local now = now_ms()

-- Records a change of the counters of `member` (a record's key, whose field
-- d then says so, or a storm name) in the index of unwritten changes D. A
-- record in the index lives at least the longer of the dedup window and
-- the incident TTL, until a sidecar writes it (index.lua, 'written').
local function unwritten(D, member, record)
  if record then
    redis.call('HSET', record, 'd', 1)
    local keep = math.max(dedup, incident)
    if redis.call('PTTL', record) < keep then
      redis.call('PEXPIRE', record, int(keep))
    end
  end
  if index_add(D, member, now) then
    redis.call('PEXPIRE', D, int(math.max(dedup, incident)))
  end
end

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
-- member: a lookup in a cold namespace found no resource of a firing's own
-- but the namespace's latest storm resource, ended while its members still
-- fire (KEYS[4]: the firing's fingerprint record; ARGV as adopt of a storm,
-- but ARGV[18] the firing's instance ms and its affected values from 19):
-- the firing was one of its members when the store lost them. The storm is
-- recorded as adopt does (the running storm only if none runs), and the
-- fingerprint as its member, counting this signal; the reply is decide's
-- for a duplicate of a storm member, or 0 if the fingerprint is known by now.
local member = op == 'member'
if (op == 'adopt' or member) and kind == 's' then
  local S, A, X = KEYS[1], KEYS[2], KEYS[3]
  local e = tonumber(ARGV[13])
  if e <= now and not member then
    return 0
  end
  if member then
    if redis.call('EXISTS', KEYS[4]) == 1 then
      return 0
    end
    -- A storm the store made itself (not from a lookup) did not lose its
    -- members: this firing was not one of them.
    if storm_live(S, X, name, now) and redis.call('HGET', S, name .. '|a') ~= '1' then
      return 0
    end
  end
  local make_current = true
  local cur = redis.call('HGET', S, 'cur')
  if cur and cur ~= name then
    local st = storm_live(S, X, cur, now)
    if st and st.e > now then
      if not member then
        return 0
      end
      make_current = false
    end
  end
  -- What the store holds of it, unless its time is up (as decide.lua sees it).
  local st = storm_live(S, X, name, now)
  if not st then
    storm_drop(S, A, X, name)
    st = { f = tonumber(ARGV[8]), l = 0, c = 0, n = 0, o = 0, k = 0, e = 0, j = 0, r = 0, v = ARGV[17] }
    redis.call('HSET', S, name .. '|a', 1)
  end
  st.l = math.max(st.l, tonumber(ARGV[9]))
  st.c = math.max(st.c, tonumber(ARGV[10]))
  st.n = math.max(st.n, tonumber(ARGV[11]))
  st.o = math.max(st.o, tonumber(ARGV[12]))
  st.e = math.max(st.e, e)
  if st.e > now then
    st.j = math.max(st.j, tonumber(ARGV[9]))
  else
    -- Ended: its last join is unknown, and at least a window before its
    -- end; its start is early enough that decide does not continue it.
    st.j = math.max(st.j, st.f)
  end
  st.r = math.max(st.r, tonumber(ARGV[16]))
  local max_affected = tonumber(ARGV[14])
  local first_affected = 18
  if member then
    first_affected = 19
  end
  for i = first_affected, #ARGV do
    if st.k < max_affected and redis.call('ZADD', A, 'NX', 0, name .. '|' .. ARGV[i]) == 1 then
      st.k = st.k + 1
    end
  end
  if member then
    st.c = st.c + 1
    st.l = now
  end
  redis.call('HSET', S, name .. '|f', int(st.f), name .. '|l', int(st.l), name .. '|c', int(st.c),
    name .. '|n', int(st.n), name .. '|e', int(st.e), name .. '|p', 0, name .. '|u', 0,
    name .. '|o', int(st.o), name .. '|k', int(st.k), name .. '|j', int(st.j))
  if make_current then
    redis.call('HSET', S, 'cur', name)
  end
  if st.r > 0 then
    redis.call('HSET', S, name .. '|r', int(st.r))
  end
  if ARGV[15] ~= '' then
    redis.call('HSET', S, name .. '|w', ARGV[15])
  end
  if st.v ~= '' then
    redis.call('HSET', S, name .. '|v', st.v)
  end
  storm_keep(S, A, X, { { name, math.max(now + math.max(dedup, incident), st.e) } }, now)
  if not member then
    return 1
  end
  local F = KEYS[4]
  unwritten(KEYS[5], name)
  redis.call('HSET', F, 's', name, 'q', owner, 'e', dc)
  if ARGV[18] ~= '0' then
    redis.call('PEXPIRE', F, int(incident))
  else
    redis.call('PEXPIRE', F, int(dedup))
  end
  return { 2, 2, 1, resource_ref(name, ARGV[15]), st.f, st.l, st.c, st.n, st.o, st.f, st.e, st.r, 0, 0,
    st.v }
end

-- uncount: the request of token `owner` failed after its decide counted a
-- signal on this fingerprint's record (KEYS[2]: the namespace's storm
-- hash): the count is taken back, in the record's own resource or its
-- storm, so that the sender's retry of the delivery counts it once. Only if
-- one of the last two counts on the record was that request's (q or Q) and
-- no other attempt of its delivery relied on it (which clears it).
if op == 'uncount' then
  local known = redis.call('HMGET', H, 'q', 'Q', 'E', 's', 'c')
  if owner == '0' then
    return 0
  end
  if known[1] == owner then
    -- The count before becomes the latest.
    redis.call('HSET', H, 'q', known[2] or '', 'e', known[3] or '')
  elseif known[2] ~= owner then
    return 0
  end
  redis.call('HDEL', H, 'Q', 'E')
  local storm, count = known[4], num(known[5])
  if storm then
    local field = storm .. '|c'
    local c = tonumber(redis.call('HGET', KEYS[2], field))
    if c and c > 0 then
      redis.call('HSET', KEYS[2], field, int(c - 1))
      unwritten(KEYS[3], storm)
    end
  elseif count > 0 then
    redis.call('HSET', H, 'c', int(count - 1))
    unwritten(KEYS[3], H, H)
  end
  return 1
end

if op == 'adopt' then
  local known = redis.call('HMGET', H, 'r', 'f', 's', 'p', 'u', 'c', 'i', 'g', 'z', 'y', 't', 'q', 'e', 'Q', 'E')
  if known[3] then
    return 0
  end
  local ci, ri = ARGV[16], known[7] or '0'
  if known[1] and (ci == '0' or ri == '0' or ri == ci) then
    -- The claim's incident, by now known (another request adopted or
    -- created it first; maybe still pending): counted as decide.lua counts
    -- a duplicate of it (wait for its claim, or take it over).
    -- (counted once per request, as decide.lua counts)
    local c = num(known[6])
    local k = { q = known[12] or '', e = known[13] or '', Q = known[14] or '', E = known[15] or '' }
    local n = count_in(k, owner, dc, dp)
    if n == 1 then
      c = redis.call('HINCRBY', H, 'c', 1)
    end
    if n ~= 0 then
      redis.call('HSET', H, 'q', k.q, 'e', k.e, 'Q', k.Q, 'E', k.E)
    end
    local write, lease_until = claim_write(num(known[4]), num(known[5]), now, lease,
      owner ~= '0' and known[11] == owner)
    redis.call('HSET', H, 'l', int(now), 'u', int(lease_until))
    if write == 1 then
      redis.call('HSET', H, 't', owner)
    end
    local keep = ttl_of(ri, known[9], dedup, incident)
    if write ~= 2 then
      keep = math.max(keep, lease_until - now)
    end
    if redis.call('PTTL', H) < keep then
      redis.call('PEXPIRE', H, int(keep))
    end
    unwritten(KEYS[2], H, H)
    return { resource_ref(known[1], committed_to(known[4])), num(known[2]), now, c, write,
      ri, tonumber(known[8]) or 1, known[9] or 0, known[10] or 0 }
  end
  -- A new record of the resource found (replacing one of another instance);
  -- the counters of the store's record if it names that resource (fresher).
  local resource = ARGV[8]
  local first, c, g, moved, z, y
  if known[1] == resource then
    first, c, g, moved = num(known[2]), num(known[6]), tonumber(known[8]) or 1, committed_to(known[4])
    z, y = num(known[9]), num(known[10])
  else
    first, c, g, moved = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[13]), ARGV[11]
    z, y = tonumber(ARGV[14]), tonumber(ARGV[15])
  end
  local i = ARGV[12]
  if ARGV[17] == '1' then
    -- Absorbed: the claim's firing counts as a new firing of the resource.
    i, g, z, y = ci, math.max(g, 1) + 1, 0, 0
  else
    g = math.max(g, 1)
  end
  c = c + 1
  redis.call('DEL', H)
  redis.call('HSET', H, 'r', resource, 'f', int(first), 'l', int(now), 'c', int(c),
    'p', committed_p(moved), 'u', 0, 'q', owner, 'e', dc)
  if i ~= '0' then
    redis.call('HSET', H, 'i', i)
  end
  if g ~= 1 then
    redis.call('HSET', H, 'g', int(g))
  end
  if z ~= 0 then
    redis.call('HSET', H, 'z', int(z), 'y', int(y))
  end
  redis.call('PEXPIRE', H, int(ttl_of(i, z, dedup, incident)))
  unwritten(KEYS[2], H, H)
  return { resource_ref(resource, moved), first, now, c, 2, i, g, z, y }
end

if kind == 's' then
  prefix = name .. '|'
  exists = prefix .. 'f'
end
local v = redis.call('HMGET', H, exists, prefix .. 'l', prefix .. 'p', prefix .. 'u', prefix .. 'w',
  prefix .. 'i', prefix .. 'z', prefix .. 'y', prefix .. 't')
if not v[1] then
  return 0
end
local last, pending, lease_until = num(v[2]), num(v[3]), num(v[4])
-- A pending claim another request holds now (it took it over when this
-- caller's lease ran out) is that request's to commit or release.
local mine = (v[9] or '') == owner

-- A fingerprint claim no longer held by a lease lives for its TTL (ttl_of)
-- from its last sighting, or from its resolution if that came later.
local function expire_after_last_sighting()
  redis.call('PEXPIRE', H, int(ttl_left(last, v[8], v[6], v[7], dedup, incident, now)))
end

if op == 'commit' then
  if pending == 1 and not mine then
    return 0
  end
  if pending == 1 then
    if kind == 'f' then
      redis.call('HSET', H, 'p', committed_p(ARGV[8]))
      expire_after_last_sighting()
    else
      redis.call('HSET', H, prefix .. 'p', 0)
      if ARGV[8] ~= '' then
        redis.call('HSET', H, prefix .. 'w', ARGV[8])
      end
    end
  end
  return 1
elseif op == 'forget' then
  if pending == 1 then
    return 0
  end
  if kind == 'f' then
    if v[1] ~= ARGV[8] then
      return 0
    end
    redis.call('DEL', H)
  else
    storm_drop(KEYS[1], KEYS[2], KEYS[3], name)
  end
  return 1
elseif op == 'release' then
  if pending == 1 and not mine then
    return 0
  end
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
redis.call('HSET', H, prefix .. 'u', now + lease, prefix .. 't', owner)
if kind == 'f' then
  if redis.call('PTTL', H) < lease then
    redis.call('PEXPIRE', H, int(lease))
  end
else
  storm_keep(KEYS[1], KEYS[2], KEYS[3], { { name, now + lease } }, now)
end
return 3
