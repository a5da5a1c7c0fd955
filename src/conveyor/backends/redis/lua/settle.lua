-- ARGV[4..]: (queue, id, token, kind, a, b) per outcome. kind: c = completed with result a,
-- n = completed without result, r = retry at a with error b, f = failed with error b,
-- x = cancelled with reason a. Returns 1 (applied) or 0 (stale lease) per outcome.
local out, woke = {}, {}
for i = 4, #ARGV, 6 do
  local q, id, token, kind, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
                                   ARGV[i + 4], ARGV[i + 5]
  local jk = jkey(q, id)
  local h = redis.call('HMGET', jk, 'state', 'token', 'seq', 'errors', 'keep_for', 'children',
                       'lane')
  if h[1] == 'running' and h[2] == token then
    zrem_later(qkey(q, 'running'), id)
    if h[7] then  -- a lane job: its slot back, its outcome counted (first: a retry re-enters)
      FL.left(q, id, h[7], (kind == 'c' or kind == 'n') and 'success'
                           or (kind == 'r' or kind == 'f') and 'failure' or nil)
    end
    if kind == 'c' then
      redis.call('HSET', jk, 'result', a)
      finish(q, jk, id, h[3], 'running', 'completed', h[5], nil, h[6])
    elseif kind == 'n' then
      finish(q, jk, id, h[3], 'running', 'completed', h[5], 'result', h[6])
    elseif kind == 'r' then
      append_error(jk, h[4], b)
      redis.call('HSET', jk, 'run_at', a)
      redis.call('HDEL', jk, 'worker', 'lease')
      if (tonumber(a) or 0) > NOW then
        to_scheduled(q, jk, id, h[3], 'running', a)
      else
        to_ready(q, jk, id, 'running')
        woke[q] = (woke[q] or 0) + 1
      end
    elseif kind == 'f' then
      append_error(jk, h[4], b)
      finish(q, jk, id, h[3], 'running', 'failed', h[5], nil, h[6])
    else
      redis.call('HSET', jk, 'cancel_reason', a)
      finish(q, jk, id, h[3], 'running', 'cancelled', h[5], nil, h[6])
      release_key(q, jk, id)
    end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
for q, n in pairs(woke) do wake(q, n) end
return out
