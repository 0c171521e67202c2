-- decide: the signals of one namespace, in order, in one atomic step
-- (common.lua is prepended). Each signal is decided exactly as if it had a
-- call of its own; sharing the call saves the per-call work of Redis (script
-- dispatch, TIME, the warm marker) for every signal after the first.
--
-- KEYS[1] sg:{ns}:w   KEYS[2] sg:{ns}:s   KEYS[3] sg:{ns}:a   KEYS[4] sg:{ns}:x
-- KEYS[5] sg:{ns}:m (warm marker: when the store's memory of this namespace
-- began; kept alive by every decide for the marker TTL)
-- KEYS[6] sg:{ns}:o (on which server and data that memory began)
-- KEYS[7] sg:{ns}:d (the index of unwritten changes)
-- KEYS[7 + j] sg:{ns}:f:<fp> of record j (1-based): each record the
--       signals count in, once however many of them do
-- ARGV: 1 storm name prefix ('storm-<12 hex of sha256(ns)>-'), 2 dedup ttl
--       ms, 3 storm threshold, 4 storm window ms, 5 storm max duration ms,
--       6 max affected, 7 claim lease ms, 8 warm marker ttl ms, 9 incident
--       ttl ms, 10 R, the number of requests whose signals the call
--       decides; then per request r (1-based), from b = 8 + 3r: ARGV[b]
--       its token, ARGV[b + 1] and ARGV[b + 2] its delivery's tokens of
--       this window and the window before ('0' none; see count_in()); then
--       per record j, ARGV[10 + 3R + j]: its affected value (the target is
--       part of the fingerprint); then, from s = 11 + 3R + J (J records),
--       per signal i (0-based), from a = s + 4i: ARGV[a] its record j,
--       ARGV[a + 1] its request r (the owner of a claim it takes; a pending
--       claim under its own token is its to create: its call ran again
--       after a lost reply), ARGV[a + 2] firing instance ms ('0' unknown),
--       ARGV[a + 3] '' for a firing, '-' for a firing the sink was searched
--       for and has no live resource of, else the resolution's time (ms).
--       (Indices, not the keys, fingerprints and tokens again: every
--       argument costs Redis an allocation and Lua a string to intern, and
--       senders repeat their alerts.)
-- A fingerprint repeated within a call (the sidecar batches the signals of
-- concurrent requests, and senders repeat their alerts) is decided from the
-- record this call already holds: its count, last-seen and lease are written
-- once, at the end of the call (one HSET + PEXPIRE per record), instead of
-- once per signal. The outcome of every signal is the one separate calls
-- would give: nothing outside this script can run in between.
--
-- Reply: one entry per signal, in order: { outcome (1 created, 2 duplicate,
--          3 storm_started, 4 storm_aggregated, 5 resolved, 6
--          resolved_unknown), write (1 create, 2 update, 3 await, 4 lookup,
--          5 review: nothing was recorded; 6 skip), kind (0 fingerprint,
--          1 storm), resource (its name, or '<namespace>/<name>' when it
--          went to another namespace; '' when none), first seen ms, last
--          seen ms, occurrence count, then for a fingerprint: instance ms,
--          firings, resolved ms, resolution received ms (0 0 open; every
--          number 0 when no resource is known); for a storm: alert count,
--          affected overflow, storm started ms, storm ends ms, resolved
--          count, resolved ms, resolution received ms, the storm it
--          continues ('' none) }; a duplicate of a fingerprint already
--          answered in full by this call gets one integer, (occurrence
--          count × 128 + index of that signal) × 8 + write (the rest is the
--          same: same resource, same instant, nothing else changed in
--          between; one reply value rather than a table of four, as most
--          signals of a call are such repeats when senders repeat alerts).
--          (Tables of numbers rather than one formatted string a signal: Lua
--          formats a number into a string at a cost that, on the duplicate
--          path, would add a quarter to this script's CPU time.)

local W, S, A, X, M, O, D = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local storm_prefix = ARGV[1]
local dedup = tonumber(ARGV[2])
local threshold = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local max_duration = tonumber(ARGV[5])
local max_affected = tonumber(ARGV[6])
local lease = tonumber(ARGV[7])
local now = now_ms()
-- While the store's memory of the namespace is younger than a dedup window,
-- a new fingerprint may have a live resource the store does not know of.
local since = tonumber(redis.call('GETEX', M, 'PX', ARGV[8]))
local cold = not since or now - since < dedup
local checked = false

-- The data's lineage on this server: its run id (new at every restart) and
-- replication id (new whenever a replica is promoted); '' where INFO is
-- refused (renamed, or denied by an ACL).
local function server_id()
  local server = redis.pcall('INFO', 'server')
  local replication = redis.pcall('INFO', 'replication')
  if type(server) ~= 'string' or type(replication) ~= 'string' then
    return ''
  end
  return (string.match(server, 'run_id:(%x+)') or '') .. ':'
    .. (string.match(replication, 'master_replid:(%x+)') or '')
end

-- The memory of the namespace starts now, on this server (O records which).
local function restart_memory(id)
  since = now
  cold = true
  redis.call('SET', M, int(now), 'PX', ARGV[8])
  redis.call('SET', O, id, 'PX', ARGV[8])
end

if not since then
  restart_memory(server_id())
  checked = true
end

-- Whether a new fingerprint must be looked up in the sink first. Data
-- restored from an older snapshot, or a replica that lagged and was
-- promoted, brings the marker back with only part of what followed it: so
-- a warm namespace's marker must also have been written on this server,
-- with this data (O). Checked once a call, and only when a new fingerprint
-- needs it (the two INFO calls cost about 10 µs). An O gone before M (only
-- duplicates for the marker TTL) costs one cold window.
local function is_cold()
  if not cold and not checked then
    checked = true
    local id = server_id()
    if redis.call('GETEX', O, 'PX', ARGV[8]) ~= id then
      restart_memory(id)
    end
  end
  return cold
end

-- Every resource whose counters this call changes goes into the index of
-- unwritten changes (D) unless it is there; D's TTL is set once, at the end,
-- if anything was added.
local added = false
local function index(member)
  if index_add(D, member, now) then
    added = true
  end
end

-- A record in the index lives at least this long (ms, a string), so that it
-- cannot expire before a sidecar writes it, however long the sink is away
-- (a resolved incident's record otherwise lives a dedup window); the write
-- sets its own TTL back (index.lua, 'written').
local index_ttl = tonumber(ARGV[9]) >= dedup and ARGV[9] or ARGV[2]

-- Sets the TTL of own record `rec` (key F), in the index: at least
-- index_ttl, and a pending claim's record its rec.ttl if longer.
local function own_expire(F, rec)
  if rec.p == 1 then
    redis.call('PEXPIRE', F, int(math.max(tonumber(rec.ttl), tonumber(index_ttl))))
  else
    redis.call('PEXPIRE', F, index_ttl)
  end
end

-- An own record `rec` (key F) changed: into the index, unless its field d
-- says it is there (the duplicate path then costs nothing more).
local function own_index(F, rec)
  if not rec.d then
    rec.d = true
    redis.call('HSET', F, 'd', 1)
    index(F)
  end
end

local function storm_reply(outcome, write, st)
  return { outcome, write, 1, resource_ref(st.name, st.w), st.f, st.l, st.c, st.n, st.o, st.f, st.e, st.r, st.z, st.y, st.v }
end

-- Storm records read or started by this call, by name (false: gone). Like
-- the fingerprint records below, a storm is read once and its fields, its
-- place in X and the keys' TTL are written once, by flush_storms().
local storms = {}
local changed_storms = {}

-- A storm whose time in X is up counts as gone even before a sweep drops it
-- (the sweep runs once, at the end of the call).
local function storm_get(name)
  local st = storms[name]
  if st == nil then
    st = storm_live(S, X, name, now) or false
    storms[name] = st
  end
  return st or nil
end

local function storm_changed(st)
  if not st.changed then
    st.changed = true
    changed_storms[#changed_storms + 1] = st
  end
end

-- The namespace's latest storm (field 'cur' of S), read once.
local current
local function current_storm()
  if current == nil then
    current = redis.call('HGET', S, 'cur') or false
  end
  return current or nil
end

-- Settles storm `st`'s claim for the request of token `o` (claim_write);
-- a claim it takes records o as its owner.
local function storm_settle(st, o)
  local write, lease_until = claim_write(st.p, st.u, now, lease, o ~= '0' and st.t == o)
  if write == 1 and st.t ~= o then
    st.t = o
    redis.call('HSET', S, st.name .. '|t', o)
  end
  st.u = lease_until
  return write
end

-- Counts one more signal in storm `st` and settles its claim for token o.
local function storm_count(st, o)
  st.c = st.c + 1
  st.l = now
  local write = storm_settle(st, o)
  storm_changed(st)
  return write
end

local function add_affected(st, affected)
  if affected == '' then
    return
  end
  local member = st.name .. '|' .. affected
  if st.k < max_affected then
    if redis.call('ZADD', A, 'NX', 0, member) == 1 then
      st.k = st.k + 1
    end
  elseif not redis.call('ZSCORE', A, member) then
    st.o = st.o + 1
  end
end

-- Writes every storm this call changed; each record must outlive its
-- members' keys (the incident TTL, or the dedup window), the storm itself
-- and the lease. Its r, z and y only if a resolution changed them.
local function flush_storms()
  if #changed_storms == 0 then
    return
  end
  local keep = math.max(dedup, tonumber(ARGV[9]))
  local keeps = {}
  for i, st in ipairs(changed_storms) do
    local fields = {}
    local n = STORM_BASE
    if st.resolving then
      n = #STORM
    end
    for j = 1, n do
      local f = STORM[j]
      fields[2 * j - 1] = st.name .. '|' .. f
      fields[2 * j] = int(st[f])
    end
    redis.call('HSET', S, unpack(fields))
    index(st.name)
    keeps[i] = { st.name, math.max(now + keep, st.e, st.u) }
  end
  storm_keep(S, A, X, keeps, now)
end

-- A new fingerprint's F holds nothing: decide() found neither 'r' nor 's'
-- in it (or deleted a record whose storm was gone, or that it replaced), and
-- no record lacks both. So it is written without deleting it first, here
-- and on create. ttl: the member's TTL (ms, a string).
local function join_storm(F, name, ttl, o, dc)
  redis.call('HSET', F, 's', name, 'q', o, 'e', dc)
  redis.call('PEXPIRE', F, ttl)
end

-- Own-resource fingerprint records read or created by this call, by key:
-- { r resource (resource_ref), f first seen, c count, p pending, u lease
-- until, i instance (a string, '0' unknown), k the record's fields as read
-- (k[8] g, k[9] z, k[10] y: nil when absent), ttl (ms: ttl_of(rec), a
-- string, or longer for a pending claim's lease), dirty, at: the signal
-- whose reply gave it in full }.
-- A dirty record's c, l, u (while pending) and TTL are written by flush()
-- at the end.
local held = {}
local dirty = {}

-- Settles own record `rec`'s claim for the request of token `o`
-- (claim_write); its owner's token is read only while the claim is pending,
-- and a claim taken records o as its owner.
local function own_settle(F, rec, o)
  if rec.p == 1 and rec.t == nil then
    rec.t = redis.call('HGET', F, 't') or ''
  end
  local write, lease_until = claim_write(rec.p, rec.u, now, lease, o ~= '0' and rec.t == o)
  if write == 1 and rec.t ~= o then
    rec.t = o
    redis.call('HSET', F, 't', o)
  end
  rec.u = lease_until
  return write
end

local function own_duplicate(i, F, rec, o, dc, dp)
  if count_in(rec, o, dc, dp) == 1 then
    rec.c = rec.c + 1
  end
  -- (a committed claim's answer is always Update: no call for it)
  local write = 2
  if rec.p == 1 then
    write = own_settle(F, rec, o)
  end
  local lease_until = rec.u
  if rec.p == 1 then
    -- A pending claim's record lives at least until its lease ends.
    local keep = dedup
    if rec.i ~= '0' and not rec.k[9] then
      keep = tonumber(ARGV[9])
    end
    rec.ttl = math.max(keep, lease_until - now)
  end
  if not rec.dirty then
    rec.dirty = true
    dirty[#dirty + 1] = F
  end
  if rec.at then
    return (rec.c * 128 + rec.at) * 8 + write
  end
  rec.at = i
  local k = rec.k
  return { 2, write, 0, rec.r, rec.f, now, rec.c, rec.i, k[8] or 1, k[9] or 0, k[10] or 0 }
end

local function flush()
  for _, F in ipairs(dirty) do
    local rec = held[F]
    if rec and rec.dirty then
      rec.dirty = false
      if rec.p == 1 then
        redis.call('HSET', F, 'c', rec.c, 'l', now, 'q', rec.q, 'e', rec.e, 'Q', rec.Q, 'E', rec.E, 'u', rec.u)
      else
        -- (a committed claim's lease stays as it was)
        redis.call('HSET', F, 'c', rec.c, 'l', now, 'q', rec.q, 'e', rec.e, 'Q', rec.Q, 'E', rec.E)
      end
      own_expire(F, rec)
      own_index(F, rec)
    end
  end
end

-- Signal i: fingerprint key F, affected value, firing instance ci ('0'
-- unknown), absent flag ('1': the sink has no live resource of it),
-- resolved ms t ('' for a firing), request and delivery tokens o, dc, dp.
-- The rare cases (a resolution, a firing of another instance than the
-- record's) are written out in here rather than in functions of their own:
-- the script body makes each of its functions anew on every call, at a cost
-- the duplicate path would pay.
local function decide(i, F, affected, ci, absent, t, o, dc, dp)
  local rec = held[F]
  if not rec then
    local known = redis.call('HMGET', F, 'r', 'f', 'c', 'p', 'u', 's', 'i', 'g', 'z', 'y', 'q', 'd', 'e', 'Q', 'E')
    if known[6] then
      -- A storm member: repeats are duplicates of the storm resource.
      local st = storm_get(known[6])
      if t ~= '' then
        -- A member's resolution, counted in its storm (once).
        if not st then
          redis.call('DEL', F)
          return { 6, 6, 0, '', 0, 0, 0, 0, 0, 0, 0 }
        end
        if known[9] then
          return storm_reply(5, 6, st)
        end
        redis.call('HSET', F, 'z', t)
        redis.call('PEXPIRE', F, ARGV[2])
        st.r = st.r + 1
        if st.r >= st.n and st.z == 0 then
          -- Every member it knows has resolved: so has the storm.
          st.z, st.y = tonumber(t), now
        end
        local write = storm_settle(st, o)
        st.resolving = true
        storm_changed(st)
        return storm_reply(5, write, st)
      end
      if st then
        if known[9] then
          -- A resolved member fires again: its storm is open again.
          redis.call('HDEL', F, 'z')
          st.r = math.max(st.r - 1, 0)
          st.z, st.y, st.resolving = 0, 0, true
          storm_changed(st)
        end
        local write
        local k = { q = known[11] or '', e = known[13] or '', Q = known[14] or '', E = known[15] or '' }
        local n = count_in(k, o, dc, dp)
        if n == 1 then
          write = storm_count(st, o)
        else
          write = storm_settle(st, o)
        end
        if n ~= 0 then
          redis.call('HSET', F, 'q', k.q, 'e', k.e, 'Q', k.Q, 'E', k.E)
        end
        redis.call('PEXPIRE', F, ci == '0' and ARGV[2] or ARGV[9])
        return storm_reply(2, write, st)
      end
      -- The storm record is gone: the signal is new again.
      redis.call('DEL', F)
    elseif known[1] then
      -- A known fingerprint with its own resource. (p: '1' pending, '0' or
      -- '@<namespace>' committed; f, and u of a committed claim, are only
      -- passed on, so not converted.)
      local r, p = known[1], known[4]
      if p ~= '0' and p ~= '1' then
        -- (two string compares: the duplicate path's whole cost of knowing)
        r = resource_ref(r, committed_to(p))
      end
      local ri = known[7] or '0'
      rec = { r = r, f = known[2], c = num(known[3]), p = 0, u = known[5], i = ri, k = known, ttl = ARGV[2],
        q = known[11] or '', e = known[13] or '', Q = known[14] or '', E = known[15] or '', d = known[12] ~= false }
      if p == '1' then
        rec.p, rec.u = 1, num(known[5])
      end
      if ri ~= '0' and not known[9] then
        rec.ttl = ARGV[9]
      end
      held[F] = rec
    end
  end
  if rec then
    if t == '' and (ci == rec.i or ci == '0' or rec.i == '0') then
      return own_duplicate(i, F, rec, o, dc, dp)
    end
    -- A resolution, or a firing of another instance than the record's.
    local k = rec.k
    local outcome, write = 1, 5
    if t == '' then
      if absent == '1' then
        -- The sink holds nothing of it: a new incident, replacing the record.
        redis.call('DEL', F)
        rec.dirty = false
        held[F] = nil
        rec = nil
      end
    elseif not (ci == '0' or rec.i == '0' or rec.i == ci) then
      return { 6, 6, 0, '', 0, 0, 0, 0, 0, 0, 0 }
    elseif k[9] then
      -- Resolved already: the first resolution is kept.
      outcome, write = 5, 6
    else
      outcome = 5
      write = own_settle(F, rec, o)
      k[9], k[10], rec.ttl = t, now, ARGV[2]
      if rec.p == 1 and rec.u - now > dedup then
        rec.ttl = rec.u - now
      end
      redis.call('HSET', F, 'z', t, 'y', now, 'u', rec.u)
      own_expire(F, rec)
      own_index(F, rec)
      -- Its next duplicate is answered in full (its snapshot has changed).
      rec.at = nil
    end
    if rec then
      local l = now
      if not rec.dirty then
        l = num(redis.call('HGET', F, 'l'))
      end
      return { outcome, write, 0, rec.r, rec.f, l, rec.c, rec.i, k[8] or 1, k[9] or 0, k[10] or 0 }
    end
  elseif t ~= '' then
    -- A resolution of an incident the store does not know.
    return { 6, 6, 0, '', 0, 0, 0, 0, 0, 0, 0 }
  end

  -- A new fingerprint. Look in the sink first if the store may have lost it:
  -- its memory of the namespace is young, or began after this firing did.
  if absent ~= '1' and (is_cold() or (ci ~= '0' and tonumber(ci) < since)) then
    return { 1, 4, 0, '', 0, 0, 0, 0, 0, 0, 0 }
  end
  local member_ttl = ci == '0' and ARGV[2] or ARGV[9]

  -- Does a storm run in this namespace?
  local cur = current_storm()
  local previous = ''
  if cur then
    local st = storm_get(cur)
    if st and st.e > now then
      st.n = st.n + 1
      st.j = now
      if st.z ~= 0 then
        st.z, st.y, st.resolving = 0, 0, true
      end
      local write = storm_count(st, o)
      st.e = math.max(st.e, math.min(now + window, st.f + max_duration))
      add_affected(st, affected)
      join_storm(F, cur, member_ttl, o, dc)
      return storm_reply(4, write, st)
    end
    if st and now < st.j + window then
      -- It reached its maximum duration while members still joined: a new
      -- storm continues it, at once.
      previous = cur
    end
  end

  if previous == '' then
    if ci ~= '0' and absent ~= '1' then
      -- A firing the store does not hold: the sink may show an earlier
      -- firing of it that its controller still works on.
      return { 1, 5, 0, '', 0, 0, 0, 0, 0, 0, 0 }
    end
    -- Count it in the window; the first `threshold` are created individually.
    redis.call('ZREMRANGEBYSCORE', W, '-inf', now - window)
    if redis.call('ZCARD', W) < threshold then
      local fp = string.sub(F, #D + 2)
      redis.call('ZADD', W, now, fp)
      redis.call('PEXPIRE', W, int(window))
      local name = 'rr-' .. string.sub(fp, 1, 16) .. '-' .. base36(now)
      local keep = dedup
      if ci ~= '0' then
        keep = tonumber(ARGV[9])
        redis.call('HSET', F, 'r', name, 'f', now, 'l', now, 'c', 1, 'p', 1, 'u', now + lease, 't', o,
          'q', o, 'e', dc, 'i', ci)
      else
        redis.call('HSET', F, 'r', name, 'f', now, 'l', now, 'c', 1, 'p', 1, 'u', now + lease, 't', o,
          'q', o, 'e', dc)
      end
      redis.call('PEXPIRE', F, int(math.max(keep, lease)))
      held[F] = { r = name, f = now, c = 1, p = 1, u = now + lease, t = o, q = o, e = dc, Q = '', E = '', i = ci,
        k = {}, ttl = keep, at = i }
      return { 1, 1, 0, name, now, now, 1, ci, 1, 0, 0 }
    end
  end

  -- The (threshold+1)-th, or the first after a storm that ran its course
  -- while still growing (previous): a new storm, ONE resource.
  local name = storm_prefix .. base36(now)
  local st = {
    name = name, f = now, l = now, c = 1, n = 1,
    e = math.min(now + window, now + max_duration),
    p = 1, u = now + lease, o = 0, k = 0, j = now, r = 0, z = 0, y = 0, w = '', v = previous, t = o,
  }
  storm_drop(S, A, X, name)
  if previous ~= '' then
    redis.call('HSET', S, 'cur', name, name .. '|t', o, name .. '|v', previous)
  else
    redis.call('HSET', S, 'cur', name, name .. '|t', o)
  end
  current = name
  storms[name] = st
  storm_changed(st)
  add_affected(st, affected)
  join_storm(F, name, member_ttl, o, dc)
  return storm_reply(3, 1, st)
end

-- The requests (token, delivery tokens) and records (key, affected) by the
-- index the signals name them by.
local requests = tonumber(ARGV[10])
local request = {}
for r = 1, requests do
  local b = 8 + 3 * r
  request[tostring(r)] = { ARGV[b], ARGV[b + 1], ARGV[b + 2] }
end
local records = #KEYS - 7
local record_key, record_affected = {}, {}
local before_records = 10 + 3 * requests
for j = 1, records do
  local js = tostring(j)
  record_key[js] = KEYS[7 + j]
  record_affected[js] = ARGV[before_records + j]
end
local replies = {}
local before_signals = before_records + records - 3
-- (a request's signals are consecutive: its tokens are looked up once)
local last_r, o, dc, dp
for i = 1, (#ARGV - before_records - records) / 4 do
  local a = before_signals + 4 * i
  local r = ARGV[a + 1]
  if r ~= last_r then
    local q = request[r]
    last_r, o, dc, dp = r, q[1], q[2], q[3]
  end
  local j, state = ARGV[a], ARGV[a + 3]
  local absent, t = '0', state
  if state == '-' then
    absent, t = '1', ''
  end
  replies[i] = decide(i, record_key[j], record_affected[j], ARGV[a + 2], absent, t, o, dc, dp)
end
flush()
flush_storms()
if added then
  redis.call('PEXPIRE', D, int(math.max(dedup, tonumber(ARGV[9]))))
end
return replies
