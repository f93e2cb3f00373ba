-- Reserves the next free slot if it is at most ARGV[3] seconds away. Returns {1, slot}, or
-- {0, slot} when it is further away (nothing is reserved then). The slot is a string: Redis
-- would truncate a Lua number to an integer.
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
local slot = math.max(tat, now)
if slot - now > tonumber(ARGV[3]) then return {0, string.format('%.6f', slot)} end
local next_tat = slot + interval
redis.call('SET', KEYS[1], string.format('%.6f', next_tat),
           'PX', math.ceil((next_tat - now) * 1000) + 1000)
return {1, string.format('%.6f', slot)}
