-- A message fed: popped from its list (KEYS[1]) if still first (ARGV[1]); then the tenant
-- (ARGV[2]) takes its turn in the rotation (KEYS[2], counter KEYS[3]), or leaves it when
-- nothing of it is parked any more, in either of its lists (KEYS[4] the other). Parking
-- adds to the list and puts the tenant in the rotation in one transaction, so a tenant
-- never has messages parked and no turn.
if redis.call('LINDEX', KEYS[1], 0) == ARGV[1] then redis.call('LPOP', KEYS[1]) end
if redis.call('LLEN', KEYS[1]) + redis.call('LLEN', KEYS[4]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[2])
else
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[2])
end
return 1
