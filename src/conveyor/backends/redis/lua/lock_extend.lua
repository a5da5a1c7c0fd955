-- The `Locks` capability: hold a lock for ARGV[6] more seconds if token ARGV[5] still holds
-- lock ARGV[4]. Returns 1, or 0 (lost: released, expired or taken by another).
local lk = slot('') .. ':lock:' .. ARGV[4]
local h = redis.call('HMGET', lk, 'token', 'exp')
local exp = tonumber(h[2])
if h[1] ~= ARGV[5] or not exp or exp <= NOW then return 0 end
local until_ = NOW + tonumber(ARGV[6])
redis.call('HSET', lk, 'exp', num(until_))
redis.call('ZADD', slot('') .. ':locks', until_, ARGV[4])
return 1
