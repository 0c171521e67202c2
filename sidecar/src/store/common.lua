-- signalgate store: helpers shared by decide.lua, claim.lua and snapshot.lua.
-- RedisStore prepends this file to each of them (one script each, loaded by
-- SHA with EVALSHA; NOSCRIPT makes the client SCRIPT LOAD and resend).
--
-- Key layout (every key of one namespace shares the hash tag {ns}):
--   sg:{ns}:f:<fp>  hash, one per fingerprint. Own resource: r (name), f (first
--                   seen ms), l (last seen ms), c (count), p (the claim: 1
--                   pending, 0 committed, '@<namespace>' committed and the
--                   resource went to that namespace; see committed_to), u
--                   (lease until ms), t (the token of the request holding
--                   the claim: only commit and release by it count), q
--                   (the token of the request whose signal was counted
--                   last: it counts no more, and may take it back; '' once
--                   another attempt of its delivery relied on it), e (that
--                   count's delivery token: no attempt of that delivery
--                   counts again), Q and E (as q and e, of the count
--                   before; see count_in()), i (the firing instance
--                   counted last, ms; absent: 0, unknown), g (firing
--                   instances counted; absent: 1), z and y (the resolution:
--                   when it resolved and when that was received, ms; absent
--                   while open). Storm member: s (storm resource name), q,
--                   e, Q and E (as above), and z (when its resolution came, ms)
--                   once resolved. Fields a record does
--                   not need are not written (a record of an earlier
--                   version has none of i, g, z, y: an open incident, one
--                   firing, instance unknown). d ('1') while the record
--                   is in the index of unwritten changes (sg:{ns}:d), so
--                   that a count need not add it again. TTL, refreshed on every
--                   sighting: ttl_of() for an own resource (the incident TTL
--                   while it has an instance and is open, else the dedup
--                   window; a pending claim is kept at least until its lease
--                   ends); a member: the incident TTL if its last signal had
--                   an instance, else (or once resolved) the dedup window.
--   sg:{ns}:w       zset, the storm window: distinct new fingerprints created
--                   individually, scored by first-seen ms; at most
--                   storm_threshold members. TTL: storm window.
--   sg:{ns}:s       hash, every live storm of the namespace: field 'cur' names
--                   the latest storm; per storm <name>|<x> fields (see STORM).
--   sg:{ns}:a       zset (all scores 0) of '<storm name>|<affected>': each
--                   storm's de-duplicated affected list, at most
--                   storm_max_affected per storm; sorted by ZRANGEBYLEX.
--   sg:{ns}:x       zset of storm names scored by the ms until which the storm
--                   record must live (after every touch at least the longer
--                   of the dedup window and the incident TTL, as its members
--                   may live that long); expired storms are swept from s and
--                   a. s, a and x expire together when their last storm does.
--   sg:{ns}:m       the warm marker: when the store's memory of the namespace
--                   began (ms); every decide refreshes its TTL (7 days, at
--                   least the dedup window).
--   sg:{ns}:o       where that memory began: '<run id>:<replication id>' of
--                   the server (decide.lua); same TTL, refreshed when read.
--   sg:{ns}:d       zset, the index of unwritten changes: every step that
--                   changes a resource's counters adds it unless it is
--                   there (member: the record's key sg:{ns}:f:<fp> for an
--                   own resource, the storm's name for a storm), scored by
--                   when it was added (ms); a sidecar that wrote the
--                   resource removes it if the store's counters are still
--                   the ones it wrote, else moves its score to now (a live
--                   sidecar is writing it) (index.lua). TTL, set whenever
--                   a member is added or moved: the longer of the dedup
--                   window and the incident TTL (no record it names lives
--                   longer after its last change).
--   sg:namespaces   hash, namespace -> when a sidecar last said it may add
--                   to that namespace's sg:{ns}:d (ms; index.lua): where
--                   sidecars look for changes a dead sidecar left unwritten.
--                   No hash tag: one key for the whole store.

-- Store-clock milliseconds (Redis TIME), so every sidecar agrees.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Adds `member` (a record's key, or a storm's name) to the index of
-- unwritten changes D at `now`, unless it is there. Returns whether it
-- added it (the caller then sets D's TTL).
local function index_add(D, member, now)
  return redis.call('ZADD', D, 'NX', now, member) == 1
end

local function base36(n)
  local digits = '0123456789abcdefghijklmnopqrstuvwxyz'
  n = math.floor(n)
  if n <= 0 then
    return '0'
  end
  local s = ''
  while n > 0 do
    local d = n % 36
    s = string.sub(digits, d + 1, d + 1) .. s
    n = math.floor(n / 36)
  end
  return s
end

-- An integer argument (Lua would otherwise format large numbers as floats).
local function int(n)
  return string.format('%.0f', n)
end

local function num(v)
  if v then
    return tonumber(v) or 0
  end
  return 0
end

-- Per-storm fields in sg:{ns}:s:
--   f started ms, l last seen ms, c occurrences, n alert count (distinct
--   members), e end of the storm (ms, exclusive), p pending claim flag,
--   u lease until ms, o affected overflow, k affected values listed, j the
--   last join (ms: when a new member last joined), r resolved count
--   (members whose resolution came), z and y the storm's resolution (when
--   its last open member resolved and when that was received, ms; 0 open)
--   (the numbers, STORM; a field absent reads 0: r, z and y are written only
--   once a member resolved); and four strings, written only when set: w, the
--   namespace the storm resource went to when not its own, v, the storm
--   this one continues (it reached its maximum duration while members still
--   arrived), t, the token of the request holding its claim, and a ('1'),
--   set when the record was made from the storm resource a lookup found
--   (claim.lua: adopt, member) rather than by decide.
local STORM = { 'f', 'l', 'c', 'n', 'e', 'p', 'u', 'o', 'k', 'j', 'r', 'z', 'y' }
-- How many of STORM every write of a storm sets (r, z, y only when changed).
local STORM_BASE = 10

local function storm_fields(name)
  local fields = {}
  for i, f in ipairs(STORM) do
    fields[i] = name .. '|' .. f
  end
  fields[#STORM + 1] = name .. '|w'
  fields[#STORM + 2] = name .. '|v'
  fields[#STORM + 3] = name .. '|t'
  fields[#STORM + 4] = name .. '|a'
  return fields
end

local function storm_load(S, name)
  local v = redis.call('HMGET', S, unpack(storm_fields(name)))
  if not v[1] then
    return nil
  end
  local st = { name = name, w = v[#STORM + 1] or '', v = v[#STORM + 2] or '', t = v[#STORM + 3] or '' }
  for i, f in ipairs(STORM) do
    st[f] = num(v[i])
  end
  return st
end

-- Where a committed fingerprint resource went, from its record's p: the
-- namespace of a p '@<namespace>', or '' (its own namespace, or not
-- committed). Kept in p rather than a field of its own so that the
-- duplicate path reads no more than before; num(p) is 0 (committed) for it,
-- as sidecars of an earlier version sharing the store read it too.
local function committed_to(p)
  if p and string.byte(p) == 64 then
    return string.sub(p, 2)
  end
  return ''
end

-- A fingerprint record's p once committed, its resource gone to namespace
-- `moved` ('' for its own).
local function committed_p(moved)
  if moved ~= '' then
    return '@' .. moved
  end
  return 0
end

-- A resource as the scripts answer it: its name, or '<namespace>/<name>'
-- when it went to another namespace than its own (w). Names and namespaces
-- never hold a '/'. (r stays the bare name: sidecars of an earlier version
-- sharing the store read it.)
local function resource_ref(name, w)
  if w and w ~= '' then
    return w .. '/' .. name
  end
  return name
end

-- Storm `name`'s record, unless its time in X is up (even before a sweep
-- drops it): then nil.
local function storm_live(S, X, name, now)
  local until_ms = tonumber(redis.call('ZSCORE', X, name))
  if until_ms and until_ms > now then
    return storm_load(S, name)
  end
  return nil
end

local function storm_drop(S, A, X, name)
  redis.call('HDEL', S, unpack(storm_fields(name)))
  redis.call('ZREMRANGEBYLEX', A, '[' .. name .. '|', '(' .. name .. '}')
  redis.call('ZREM', X, name)
  if redis.call('HGET', S, 'cur') == name then
    redis.call('HDEL', S, 'cur')
  end
end

-- Keeps each storm of `keeps` ({ name, until_ms } pairs) at least until its
-- until_ms, then sweeps storms whose time is up and sets the TTL of the
-- namespace's storm keys to the last storm's. (Every storm is kept before the
-- sweep, so none of them can be swept.)
local function storm_keep(S, A, X, keeps, now)
  for _, k in ipairs(keeps) do
    redis.call('ZADD', X, 'GT', k[2], k[1])
  end
  local dead = redis.call('ZRANGEBYSCORE', X, '-inf', now, 'LIMIT', 0, 16)
  for _, d in ipairs(dead) do
    storm_drop(S, A, X, d)
  end
  local last = redis.call('ZRANGE', X, -1, -1, 'WITHSCORES')
  if last[2] then
    local ttl = tonumber(last[2]) - now
    if ttl < 1 then
      ttl = 1
    end
    redis.call('PEXPIRE', S, int(ttl))
    redis.call('PEXPIRE', A, int(ttl))
    redis.call('PEXPIRE', X, int(ttl))
  end
end

-- What the caller must do with a claim: 1 Create, 2 Update, 3 Await.
-- Takes over a pending claim whose lease expired (returns the new lease end;
-- the caller then records its token as the claim's owner). held: the
-- caller's own token holds the live lease (its call ran again after a lost
-- reply): still the caller's to create.
local function claim_write(pending, lease_until, now, lease, held)
  if pending == 0 then
    return 2, lease_until
  end
  if lease_until > now then
    if held then
      return 1, lease_until
    end
    return 3, lease_until
  end
  return 1, now + lease
end

-- A fingerprint record's TTL after a sighting (ms): the incident TTL while
-- it has a firing instance (i, a string) and is open (z absent or 0), else
-- the dedup window.
local function ttl_of(i, z, dedup, incident)
  if i and i ~= '0' and num(z) == 0 then
    return incident
  end
  return dedup
end

-- What is left of that TTL now (ms, at least 1), counted from its last
-- sighting l or from its resolution's receipt y if that came later.
local function ttl_left(l, y, i, z, dedup, incident, now)
  return math.max(1, math.max(num(l), num(y)) + ttl_of(i, z, dedup, incident) - now)
end

-- Whether a signal of request o, delivery tokens dc (of its window) and dp
-- (of the window before), counts in a record whose last two counts are k.q
-- and k.e (the latest: the counting request's token, its delivery token)
-- and k.Q and k.E (the one before; all strings, '' none), updating them
-- (Counted::count in the Rust store): 1 it counts (o's count becomes the
-- latest, the latest the one before); 0 it does not, nothing changed (one
-- of them was this request's own: its call ran again, or it repeats the
-- signal); 2 it does not, the count being another attempt's of the same
-- delivery: its request token is cleared, so that neither attempt takes
-- back a count the other may have had acknowledged. Token '0' is no
-- request's (always counts); delivery '0' or '' is none.
local function count_in(k, o, dc, dp)
  if o ~= '0' then
    if k.q == o or k.Q == o then
      return 0
    end
    if dc ~= '0' and dc ~= '' then
      if k.e == dc or k.e == dp then
        if k.q == '' then
          return 0
        end
        k.q = ''
        return 2
      end
      if k.E == dc or k.E == dp then
        if k.Q == '' then
          return 0
        end
        k.Q = ''
        return 2
      end
    end
  end
  k.Q, k.E = k.q, k.e
  k.q, k.e = o, dc
  return 1
end
