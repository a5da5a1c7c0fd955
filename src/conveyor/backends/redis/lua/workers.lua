-- The `Presence` capability: the workers whose last beat has not expired, as {id, info,
-- seen_at} each; forgets the expired ones on the way.
local base = slot('') .. ':workers'
for _, id in ipairs(redis.call('ZRANGEBYSCORE', base, '-inf', NOW_S)) do
  redis.call('HDEL', base .. ':info', id)
  redis.call('HDEL', base .. ':seen', id)
  redis.call('ZREM', base, id)
end
local out = {}
for _, id in ipairs(redis.call('ZRANGE', base, 0, -1)) do
  out[#out + 1] = {id, redis.call('HGET', base .. ':info', id) or '',
                   redis.call('HGET', base .. ':seen', id) or '0'}
end
return out
