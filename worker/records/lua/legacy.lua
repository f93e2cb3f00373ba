-- The records of the release before this one (worker/records/legacy.py), folded into a
-- person's record by the scripts that read them. A prelude after person.lua (it uses
-- newer): the scripts that use it pass the key names, so it has no KEYS or ARGV of its own.

-- The older tombstone (timestamp_us, or false when there is none): the newer one stays.
local function fold_tombstone(b, tomb)
  if tomb and (not b.e or tonumber(tomb) > tonumber(b.e)) then b.e = tomb end
end

-- The older state hash (property -> "timestamp_us\tversion\tvalue JSON\tevent key"),
-- tombstone and values last delivered to connector c, folded into the record b, then
-- deleted. Whether there was any.
local function fold_older(b, c, state, erased, sent)
  local flat = redis.call('HGETALL', state)
  for i = 1, #flat, 2 do
    local ts, ver, value, ekey =
      string.match(flat[i + 1], '^(%-?%d+)\t(%-?%d*)\t([^\t]*)\t(.*)$')
    local cur = b.p[flat[i]]
    if not cur or newer(ts, ver, cur[1], cur[2]) then
      b.p[flat[i]] = {ts, ver, value, ekey}
    end
  end
  local tomb = redis.call('GET', erased)
  fold_tombstone(b, tomb)
  local delivered = redis.call('HGETALL', sent)
  if #delivered > 0 then
    local d = b.d[c] or {}
    for i = 1, #delivered, 2 do
      if d[delivered[i]] == nil then d[delivered[i]] = delivered[i + 1] end
    end
    b.d[c] = d
  end
  if #flat > 0 or tomb or #delivered > 0 then
    redis.call('DEL', state, erased, sent)
    return true
  end
  return false
end

-- Whether an older release marked the event done for the connector: its ref in the
-- person's sorted set of done events (scored by expiry, epoch s), or a marker named by
-- the event key alone (two releases ago).
local function older_done(dones, marker, ref, now_ms)
  local score = redis.call('ZSCORE', dones, ref)
  return (score and tonumber(score) > now_ms / 1000) or redis.call('EXISTS', marker) == 1
end
