-- The `Locks` capability: take a free or expired lock. ARGV[4] name, [5] owner, [6] ttl
-- (seconds). Returns the new fencing token (from one counter per prefix, so tokens grow
-- across every holding of every name), or false while someone else holds it.
local lk = slot('') .. ':lock:' .. ARGV[4]
local h = redis.call('HMGET', lk, 'token', 'exp')
local exp = tonumber(h[2])
if h[1] and exp and exp > NOW then return false end
local token = redis.call('INCR', slot('') .. ':lock_seq')
local until_ = NOW + tonumber(ARGV[6])
redis.call('HSET', lk, 'owner', ARGV[5], 'token', token, 'exp', num(until_))
redis.call('ZADD', slot('') .. ':locks', until_, ARGV[4])
return token
