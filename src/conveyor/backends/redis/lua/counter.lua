-- The `Counters` capability. KEYS[1] the counter (a hash: v, exp); ARGV[4] the amount,
-- ARGV[5] the window in seconds. A fixed window that starts at the increment creating it,
-- judged by NOW (the server's clock, or the caller's injected one); the key's own expiry
-- (the same length, in server time) only collects it.
local h = redis.call('HMGET', KEYS[1], 'v', 'exp')
local v, exp = tonumber(h[1]), tonumber(h[2])
local ttl = tonumber(ARGV[5])
if not v or not exp or exp <= NOW then
  v = 0
  redis.call('HSET', KEYS[1], 'exp', num(NOW + ttl))
  redis.call('PEXPIRE', KEYS[1], math.max(1, math.floor(ttl * 1000)))
end
v = v + tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'v', v)
return v
