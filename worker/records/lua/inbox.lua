-- Store the signals not seen before, in one step: a signal whose seen-marker already
-- exists is a copy (a tool's retry) and is dropped.
-- KEYS[1]: the inbox list; KEYS[2..]: each signal's seen-marker.
-- ARGV[1]: how long a marker is kept (seconds); ARGV[2..]: each signal's entry.
local stored = 0
for i = 2, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    stored = stored + 1
  end
end
return stored
