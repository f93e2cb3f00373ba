-- Forgets a person. What each connector was told of a property that goes, goes with it;
-- the values last delivered go whole. The tombstone, the erasures told and the locks stay.
-- Runs after person.lua.
-- KEYS[1]: the person's record, then keys of the older release to delete whole.
-- ARGV[1]: "all" (prefsync state forget: every property) or the timestamp_us of their
-- erasure (properties dated at or before it go; later ones are a new life, kept).
-- Returns how many records went (properties, values delivered and older keys).
local raw = redis.call('GET', KEYS[1])
local gone = 0
if raw then
  local b = load(raw)
  local up_to = ARGV[1] ~= 'all' and tonumber(ARGV[1])
  for name, entry in pairs(b.p) do
    if not up_to or tonumber(entry[1]) <= up_to then
      b.p[name] = nil
      gone = gone + 1
      if up_to then
        for _, told in pairs(b.t) do told[name] = nil end
      end
    end
  end
  for _, delivered in pairs(b.d) do
    for _ in pairs(delivered) do gone = gone + 1 end
  end
  b.d = {}
  redis.call('SET', KEYS[1], encode(b), 'KEEPTTL')
end
if #KEYS > 1 then gone = gone + redis.call('DEL', unpack(KEYS, 2)) end
return gone
