-- The `Presence` capability: worker ARGV[4] (its info as JSON in ARGV[5]) is alive for
-- ARGV[6] seconds from NOW.
local base = slot('') .. ':workers'
redis.call('HSET', base .. ':info', ARGV[4], ARGV[5])
redis.call('HSET', base .. ':seen', ARGV[4], NOW_S)
redis.call('ZADD', base, NOW + tonumber(ARGV[6]), ARGV[4])
return 1
