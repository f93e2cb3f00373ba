-- KEYS: the stream, how many outcomes it holds (absent: a stream of one outcome an entry,
-- as an older release wrote it). ARGV: the bound, how many outcomes the entry lists, then
-- the entry's fields and values. Appends the entry, then removes the oldest entries until
-- the stream holds no more outcomes than the bound. An exact bound (not "~"): operators
-- size Redis by it.
local held = tonumber(redis.call('GET', KEYS[2]) or redis.call('XLEN', KEYS[1]))
held = held + tonumber(ARGV[2])
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
local bound = tonumber(ARGV[1])
while held > bound do
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 4)
  if #oldest == 0 then held = 0; break end
  local cut = {}
  for _, entry in ipairs(oldest) do
    if held <= bound then break end
    local count, fields = 1, entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'n' then count = tonumber(fields[i + 1]) end
    end
    held = held - count
    cut[#cut + 1] = entry[1]
  end
  redis.call('XDEL', KEYS[1], unpack(cut))
end
redis.call('SET', KEYS[2], held)
return held
