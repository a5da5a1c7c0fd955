-- The `Locks` capability: free lock ARGV[4] if token ARGV[5] still holds it. Returns 1 or 0.
-- A freed lock pushes one wake-up to its `lock_free` list, where a waiter (`wait_lock`)
-- blocks in BLPOP: one release wakes one waiter, the one that may take it. The list keeps at
-- most one token (a release nobody waited for leaves one spurious wake-up, never a pile) and
-- expires, so released names leave nothing behind.
local lk = slot('') .. ':lock:' .. ARGV[4]
local h = redis.call('HMGET', lk, 'token', 'exp')
local exp = tonumber(h[2])
if h[1] ~= ARGV[5] or not exp or exp <= NOW then return 0 end
redis.call('DEL', lk)
redis.call('ZREM', slot('') .. ':locks', ARGV[4])
local free = slot('') .. ':lock_free:' .. ARGV[4]
redis.call('RPUSH', free, '1')
redis.call('LTRIM', free, -1, -1)
redis.call('PEXPIRE', free, 10000)
return 1
