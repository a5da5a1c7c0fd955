-- The `Locks` capability: the locks held now, as {name, owner, token, expires} each; drops
-- the records of expired ones on the way.
local idx = slot('') .. ':locks'
for _, name in ipairs(redis.call('ZRANGEBYSCORE', idx, '-inf', NOW_S)) do
  local lk = slot('') .. ':lock:' .. name
  local exp = tonumber(redis.call('HGET', lk, 'exp'))
  if not exp or exp <= NOW then
    redis.call('DEL', lk)
    redis.call('ZREM', idx, name)
  end
end
local out = {}
for _, name in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
  local h = redis.call('HMGET', slot('') .. ':lock:' .. name, 'owner', 'token', 'exp')
  if h[1] then out[#out + 1] = {name, h[1], h[2], h[3]} end
end
return out
