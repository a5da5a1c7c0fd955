-- ARGV[4] the LeaseExpired message, [5] max per queue, [6..] queues. Returns how many.
local message = cjson.encode(ARGV[4])
local n = 0
for a = 6, #ARGV do
  local q = ARGV[a]
  local running = qkey(q, 'running')
  local woke = 0
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', running, '-inf', NOW_S, 'LIMIT', 0,
                                 tonumber(ARGV[5]))) do
    zrem_later(running, id)
    local jk = jkey(q, id)
    local h = redis.call('HMGET', jk, 'state', 'attempts', 'max_attempts', 'cancel_requested',
                         'seq', 'errors', 'children', 'lane')
    if h[1] == 'running' then
      n = n + 1
      if h[8] then FL.left(q, id, h[8], h[4] ~= '1' and 'failure' or nil) end
      if h[4] == '1' then
        finish(q, jk, id, h[5], 'running', 'cancelled', nil, nil, h[7])
        release_key(q, jk, id)
      else
        local attempts = tonumber(h[2]) or 0
        append_error(jk, h[6], '{"attempt":' .. attempts .. ',"type":"LeaseExpired","message":'
                     .. message .. ',"traceback":"","at":' .. NOW_S .. '}')
        if attempts >= (tonumber(h[3]) or 1) then
          finish(q, jk, id, h[5], 'running', 'failed', nil, nil, h[7])
        else
          redis.call('HDEL', jk, 'worker', 'lease')
          to_ready(q, jk, id, 'running')
          woke = woke + 1
        end
      end
    end
  end
  wake(q, woke)
end
return n
