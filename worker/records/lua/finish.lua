-- Appends to each person's record the line StateStore.finish made (what ended for a
-- connector, the values delivered, the release of the lock); the next load folds it in.
-- KEYS: the records. ARGV: the state TTL (s), then one line per record, in KEYS' order.
-- A record gone meanwhile (forgotten, expired) is not kept for ever by the line that
-- recreates it: that one gets the state's expiry.
for i, name in ipairs(KEYS) do
  local line = '\n' .. ARGV[i + 1]
  if redis.call('APPEND', name, line) == #line then redis.call('EXPIRE', name, ARGV[1]) end
end
return 1
