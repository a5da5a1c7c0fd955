-- ARGV[4] lease_for, then (queue, id, token) per lease. Returns expires or false per lease.
local expires = NOW + tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV, 3 do
  local q, id, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local jk = jkey(q, id)
  local h = redis.call('HMGET', jk, 'state', 'token', 'cancel_requested', 'seq',
                       'children', 'lane')
  local r = false
  if h[1] == 'running' and h[2] == token then
    if h[3] == '1' then
      -- A requested cancel lands here, fenced like any other transition.
      zrem_later(qkey(q, 'running'), id)
      if h[6] then FL.left(q, id, h[6], nil) end
      finish(q, jk, id, h[4], 'running', 'cancelled', nil, nil, h[5])
      release_key(q, jk, id)
    else
      redis.call('HSET', jk, 'lease', num(expires))
      zadd_later(qkey(q, 'running'), expires, id)
      r = num(expires)
    end
  end
  out[#out + 1] = r
end
return out
