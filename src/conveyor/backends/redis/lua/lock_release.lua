-- The `Locks` capability: free lock ARGV[4] if token ARGV[5] still holds it. Returns 1 or 0.
local lk = slot('') .. ':lock:' .. ARGV[4]
local h = redis.call('HMGET', lk, 'token', 'exp')
local exp = tonumber(h[2])
if h[1] ~= ARGV[5] or not exp or exp <= NOW then return 0 end
redis.call('DEL', lk)
redis.call('ZREM', slot('') .. ':locks', ARGV[4])
return 1
