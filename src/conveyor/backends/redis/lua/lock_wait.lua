-- The `Locks` capability, before a waiter blocks: seconds until lock ARGV[4]'s holding
-- expires, or 0 if it is free (or expired) now. The waiter then BLPOPs the lock's
-- `lock_free` list for at most that long, so a crashed holder's expiry wakes it too.
local exp = tonumber(redis.call('HGET', slot('') .. ':lock:' .. ARGV[4], 'exp'))
if not exp or exp <= NOW then return '0' end
return num(exp - NOW)
