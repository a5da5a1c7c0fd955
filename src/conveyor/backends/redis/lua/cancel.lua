-- ARGV[4] queue, [5] id, [6] reason. Returns the state afterwards, or false if unknown.
-- A waiting, scheduled or queued job is cancelled at once (its waiting children in turn).
local q, id = ARGV[4], ARGV[5]
local jk = jkey(q, id)
local h = redis.call('HMGET', jk, 'state', 'seq', 'priority', 'run_at', 'children', 'lane')
local st = h[1]
if not st then return false end
if st == 'waiting' or st == 'scheduled' or st == 'queued' then
  redis.call('ZREM', qkey(q, 'scheduled'), id)
  if h[6] then  -- a lane job: out of its lane's ready set (the lane parked if that empties it)
    if redis.call('ZREM', FL.key(q, h[6], 'lane_ready'), rank(h[3], h[4], h[2], id)) == 1 then
      FL.place(FL.get(q, h[6]))
    end
  else
    redis.call('ZREM', qkey(q, 'ready'), rank(h[3], h[4], h[2], id))
  end
  redis.call('HSET', jk, 'cancel_reason', ARGV[6])
  finish(q, jk, id, h[2], st, 'cancelled', nil, nil, h[5])
  release_key(q, jk, id)
  return 'cancelled'
end
if st == 'running' then
  redis.call('HSET', jk, 'cancel_requested', 1, 'cancel_reason', ARGV[6])
end
return st
