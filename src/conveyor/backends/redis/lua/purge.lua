-- ARGV[4] max per (queue, state), [5] number of states, then the states, then the queues.
-- Deletes finished jobs whose retention ended; returns their ids.
local max, ns = tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {}
for a = 6 + ns, #ARGV do
  local q = ARGV[a]
  for s = 6, 5 + ns do
    local st = ARGV[s]
    local exp = qkey(q, 'expires:' .. st)
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', NOW_S, 'LIMIT', 0, max)) do
      local jk = jkey(q, id)
      if redis.call('HGET', jk, 'state') == st then
        release_key(q, jk, id)
        redis.call('DEL', jk)
        out[#out + 1] = id
      end
      redis.call('ZREM', exp, id)
      redis.call('ZREM', qkey(q, 'state:' .. st), id)
    end
  end
end
return out
