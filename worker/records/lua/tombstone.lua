-- Moves a person's tombstone (the time of their erasure) forward, never back; the record
-- then lives as long as the state would have. Runs after person.lua and legacy.lua.
-- Also moves forward the tombstone in the record of the casefolded id (a destination that
-- ignores letter case names the person by it too).
-- KEYS[1]: the person's record; KEYS[2]: the casefolded id's record; KEYS[3], while the
-- older release's records may live: its tombstone, folded in and deleted.
-- ARGV[1]: the erasure's timestamp_us; ARGV[2]: the state TTL (s).
-- Returns 1 when the record was written, 0 when it already held a tombstone as new.
local b = load(redis.call('GET', KEYS[1]))
local f = load(redis.call('GET', KEYS[2]))
if not f.e or tonumber(ARGV[1]) > tonumber(f.e) then
  f.e = ARGV[1]
  redis.call('SET', KEYS[2], encode(f), 'EX', ARGV[2])
end
local older = KEYS[3] and redis.call('GET', KEYS[3])
fold_tombstone(b, older)
local tomb = b.e and tonumber(b.e)
local changed = older and true or false
if not tomb or tonumber(ARGV[1]) > tomb then
  b.e = ARGV[1]
  changed = true
end
if not changed then return 0 end
redis.call('SET', KEYS[1], encode(b), 'EX', ARGV[2])
if older then redis.call('DEL', KEYS[3]) end
return 1
