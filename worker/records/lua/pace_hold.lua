-- Moves the next free slot to at least ``now + ARGV[2]`` seconds.
local now = tonumber(ARGV[1])
local until_at = now + tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if until_at > tat then
  redis.call('SET', KEYS[1], string.format('%.6f', until_at),
             'PX', math.ceil((until_at - now) * 1000) + 1000)
end
return 1
