-- ARGV[4] queue, [5] id, [6] reason. Returns the state afterwards, or false if unknown.
-- A waiting, scheduled or queued job is cancelled at once (its waiting children in turn).
local q, id = ARGV[4], ARGV[5]
local jk = jkey(q, id)
local h = redis.call('HMGET', jk, 'state', 'seq', 'priority', 'run_at', 'children')
local st = h[1]
if not st then return false end
if st == 'waiting' or st == 'scheduled' or st == 'queued' then
  redis.call('ZREM', qkey(q, 'scheduled'), id)
  redis.call('ZREM', qkey(q, 'ready'), rank(h[3], h[4], h[2], id))
  redis.call('HSET', jk, 'cancel_reason', ARGV[6])
  finish(q, jk, id, h[2], st, 'cancelled', nil, nil, h[5])
  release_key(q, jk, id)
  return 'cancelled'
end
if st == 'running' then
  redis.call('HSET', jk, 'cancel_requested', 1, 'cancel_reason', ARGV[6])
end
return st
