-- The `Presence` capability: forget worker ARGV[4] at once (a clean stop).
local base = slot('') .. ':workers'
redis.call('HDEL', base .. ':info', ARGV[4])
redis.call('HDEL', base .. ':seen', ARGV[4])
redis.call('ZREM', base, ARGV[4])
return 1
