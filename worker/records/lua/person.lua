-- The reader and writer of a person's record (its format: worker/records/person.py, whose
-- load_record reads it the same way). A prelude: the scripts that use it come after it,
-- so it has no KEYS or ARGV of its own.

-- The record, then the lines finish appended, folded in order.
local function load(raw)
  local b = {p = {}, t = {}, d = {}, l = {}, x = {}}
  if not raw then return b end
  for line in string.gmatch(raw, '[^\n]+') do
    local o = cjson.decode(line)
    local c = o.f
    if c == nil then
      for _, part in ipairs({'p', 't', 'd', 'l', 'x'}) do
        if o[part] then b[part] = o[part] end
      end
      b.e = o.e
    else
      for _, part in ipairs({'t', 'd'}) do
        if o[part] then
          local into = b[part][c] or {}
          for name, value in pairs(o[part]) do into[name] = value end
          b[part][c] = into
        end
      end
      local x = b.x[c]
      if o.x and (not x or tonumber(o.x[1]) >= tonumber(x[1])) then b.x[c] = o.x end
      local lock = b.l[c]
      if lock and lock[1] == o.k then b.l[c] = nil end
    end
  end
  return b
end

-- Parts left empty are left out: every byte of a record is kept for every person.
local function encode(b)
  for _, part in ipairs({'p', 't', 'd', 'l', 'x'}) do
    if next(b[part]) == nil then b[part] = nil end
  end
  return cjson.encode(b)
end

-- Whether the ordering key (timestamp_us, version; "" for none) is newer than the current.
-- Versions decide only within MAX_VERSION_STEP of each other (worker/core/events.py: one
-- version far ahead must not make every later change stale); further apart, timestamps do.
local MAX_VERSION_STEP = 10
local function newer(ts, ver, cts, cver)
  if ver ~= '' and cver ~= '' then
    local step = tonumber(ver) - tonumber(cver)
    if step ~= 0 and math.abs(step) <= MAX_VERSION_STEP then return step > 0 end
  end
  return tonumber(ts) > tonumber(cts)
end
