-- Claims a group of users for one connector (StateStore.claim), atomically per user: takes
-- the connector's lock in the person's record, folds in the older release's records, notes
-- the events already done and those the person's erasure outranks, merges the others'
-- property values (newest ordering key wins) and writes the record back.
-- Runs after person.lua and legacy.lua.
--
-- KEYS, per user: their record, then for an id the connector compares without letter case
-- the record of the casefolded id (a record as a person's: the newest value of each
-- property among every spelling, this connector's lock, the tombstone), then with ARGV[6]
-- or ARGV[7] the older release's keys (state hash, tombstone, values last delivered to
-- this connector, done markers for this connector), then with ARGV[7] one older done
-- marker per event (named by the event key).
-- ARGV: the lock token, the lock TTL (ms), the state TTL (s), now (epoch ms), the
-- connector, "1" to fold the older release's records in, "1" to read its done markers,
-- then per user: "1" when the casefolded id's record is given, how many events, and per
-- event its key, its ref (the keyed hash of its key; the older done markers hold it whole,
-- a record its first 16 characters), "e" for an erasure or "w", its timestamp_us, its
-- version ("" for none), how many property writes follow, then those writes (name, value
-- JSON). Either tombstone outranks the past; an erasure moves both forward. With the
-- casefolded id's record, its lock must be free too, and is taken; writes merge into both.
-- Returns per user false when a lock is held elsewhere (nothing done); else {the keys of
-- the events already done (an erasure this connector was told, or an older release's
-- marker), the keys of the events the erasure outranks, the record as written, the
-- casefolded id's record as written or false}. Only a write that wins (or a new record)
-- refreshes the expiry: a merge that loses must not keep alive the state it lost to.
local token, lock_ms, ttl, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local c, fold, marked = ARGV[5], ARGV[6] == '1', ARGV[7] == '1'
local answers = {}

local function held_elsewhere(lock)
  return lock and lock[1] ~= token and tonumber(lock[2]) > now
end

-- Merges one property write of the event into the record: true when it won.
local function merge(b, event, property, value)
  local cur = b.p[property]
  if cur and (cur[4] == event.key or not newer(event.raw_ts, event.ver, cur[1], cur[2])) then
    return false
  end
  b.p[property] = {event.raw_ts, event.ver, value, event.key}
  return true
end

local k, a = 1, 8
while a <= #ARGV do
  local name = KEYS[k]
  k = k + 1
  local folded = nil
  if ARGV[a] == '1' then folded = KEYS[k]; k = k + 1 end
  local older = nil
  if fold or marked then older = {KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]}; k = k + 4 end
  local events = {}
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  for i = 1, n do
    local count = tonumber(ARGV[a + 5])
    events[i] = {
      key = ARGV[a], ref = ARGV[a + 1], erase = ARGV[a + 2] == 'e', raw_ts = ARGV[a + 3],
      ts = tonumber(ARGV[a + 3]), ver = ARGV[a + 4], first = a + 6, count = count,
    }
    if marked then events[i].marker = KEYS[k]; k = k + 1 end
    a = a + 6 + 2 * count
  end
  local raw = redis.call('GET', name)
  local b = load(raw)
  local f_raw = folded and redis.call('GET', folded)
  local f = folded and load(f_raw)
  local f_changed = folded and not f_raw
  if held_elsewhere(b.l[c]) or (f and held_elsewhere(f.l[c])) then
    answers[#answers + 1] = false
  else
    local changed = not raw
    if fold then
      changed = fold_older(b, c, older[1], older[2], older[3]) or changed
    end
    local x = b.x[c]
    for _, event in ipairs(events) do
      event.done = event.erase and x ~= nil and tonumber(x[1]) >= event.ts
      if marked and not event.done then
        event.done = older_done(older[4], event.marker, event.ref, now)
      end
    end
    local tomb = b.e and tonumber(b.e)
    local erasing = nil
    for _, event in ipairs(events) do
      if event.erase and not event.done then
        if not erasing or event.ts > tonumber(erasing) then erasing = event.raw_ts end
        if not tomb or event.ts > tomb then
          tomb = event.ts
          b.e = event.raw_ts
          changed = true
        end
      end
    end
    if f then
      if erasing and (not f.e or tonumber(erasing) > tonumber(f.e)) then
        f.e = erasing
        f_changed = true
      end
      if f.e and (not tomb or tonumber(f.e) > tomb) then tomb = tonumber(f.e) end
    end
    local done, erased = {}, {}
    for _, event in ipairs(events) do
      if event.done then
        done[#done + 1] = event.key
      elseif event.erase then
        -- sent as the destination's erasure; nothing to merge
      elseif tomb and event.ts <= tomb then
        erased[#erased + 1] = event.key
      else
        for i = event.first, event.first + 2 * (event.count - 1), 2 do
          changed = merge(b, event, ARGV[i], ARGV[i + 1]) or changed
          if f then f_changed = merge(f, event, ARGV[i], ARGV[i + 1]) or f_changed end
        end
      end
    end
    b.l[c] = {token, string.format('%d', now + lock_ms)}
    local written = encode(b)
    if changed then
      redis.call('SET', name, written, 'EX', ttl)
    else
      redis.call('SET', name, written, 'KEEPTTL')
    end
    local folded_written = false
    if f then
      f.l[c] = b.l[c]
      folded_written = encode(f)
      if f_changed then
        redis.call('SET', folded, folded_written, 'EX', ttl)
      else
        redis.call('SET', folded, folded_written, 'KEEPTTL')
      end
    end
    answers[#answers + 1] = {done, erased, written, folded_written}
  end
end
return answers
