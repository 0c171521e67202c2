-- snapshot: the counters of one resource (common.lua is prepended).
--
-- A fingerprint resource: KEYS[1] sg:{ns}:f:<fp>, KEYS[2] sg:{ns}:d.
-- A storm resource:       KEYS[1] sg:{ns}:s, KEYS[2] sg:{ns}:a, KEYS[3] sg:{ns}:d.
-- ARGV: 1 kind ('f' or 's'), 2 storm resource name (storm resources)
-- Reply: {} when gone, else { resource (its name, or '<namespace>/<name>'
--        when it went to another namespace), first seen ms, last seen ms,
--        occurrence count, then for a fingerprint resource: instance ms,
--        firings, resolved ms, resolution received ms (0 0 open); for a
--        storm: alert count, affected overflow, started ms, ends ms,
--        resolved count, resolved ms, resolution received ms, the storm it
--        continues ('' none); then 1 if it is in the index of unwritten
--        changes sg:{ns}:d (else 0), 1 if its claim is pending (else 0);
--        for a storm then its affected values (sorted) ... }.

local kind, name = ARGV[1], ARGV[2]

if kind == 'f' then
  local v = redis.call('HMGET', KEYS[1], 'r', 'f', 'l', 'c', 'p', 'i', 'g', 'z', 'y', 'd')
  if not v[1] then
    return {}
  end
  return { resource_ref(v[1], committed_to(v[5])), num(v[2]), num(v[3]), num(v[4]),
    num(v[6]), tonumber(v[7]) or 1, num(v[8]), num(v[9]),
    (v[10] or redis.call('ZSCORE', KEYS[2], KEYS[1])) and 1 or 0, v[5] == '1' and 1 or 0 }
end

local st = storm_load(KEYS[1], name)
if not st then
  return {}
end
local reply = { resource_ref(name, st.w), st.f, st.l, st.c, st.n, st.o, st.f, st.e, st.r, st.z, st.y, st.v,
  redis.call('ZSCORE', KEYS[3], name) and 1 or 0, st.p }
local prefix = name .. '|'
local listed = redis.call('ZRANGEBYLEX', KEYS[2], '[' .. prefix, '(' .. name .. '}')
for _, member in ipairs(listed) do
  reply[#reply + 1] = string.sub(member, #prefix + 1)
end
return reply
