--! standalone
-- KEYS[1] the counter; ARGV[1] amount, ARGV[2] ttl in ms. A fixed window counter.
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2], 'NX')
return v
