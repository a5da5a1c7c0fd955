-- ARGV[4] queue, [5] id. Failed or cancelled → queued with fresh attempts. Returns 1 or 0.
local q, id = ARGV[4], ARGV[5]
local jk = jkey(q, id)
local h = redis.call('HMGET', jk, 'state', 'key')
local st = h[1]
if st ~= 'failed' and st ~= 'cancelled' then return 0 end
if h[2] then
  local holder = holder_of(q, h[2])
  if holder and holder ~= id then return 0 end
  redis.call('HSET', slot(q) .. ':uniq', h[2], id)
end
redis.call('ZREM', qkey(q, 'expires:' .. st), id)
redis.call('HSET', jk, 'run_at', NOW_S, 'attempts', 0)
redis.call('HDEL', jk, 'finished_at', 'result', 'cancel_requested')
to_ready(q, jk, id, st)
wake(q, 1)
return 1
