-- ARGV[4..]: (queue, id) pairs, all in one slot. Failed or cancelled → queued with fresh
-- attempts. Returns 1 or 0 per pair.
local out, woke = {}, {}
for a = 4, #ARGV - 1, 2 do
  local q, id = ARGV[a], ARGV[a + 1]
  local jk = jkey(q, id)
  local h = redis.call('HMGET', jk, 'state', 'key')
  local st = h[1]
  local ok = st == 'failed' or st == 'cancelled'
  if ok and h[2] then
    local holder = holder_of(q, h[2])
    if holder and holder ~= id then
      ok = false
    else
      redis.call('HSET', slot(q) .. ':uniq', h[2], id)
    end
  end
  if ok then
    redis.call('ZREM', qkey(q, 'expires:' .. st), id)
    redis.call('HSET', jk, 'run_at', NOW_S, 'attempts', 0)
    redis.call('HDEL', jk, 'finished_at', 'result', 'cancel_requested')
    to_ready(q, jk, id, st)
    woke[q] = (woke[q] or 0) + 1
  end
  out[#out + 1] = ok and 1 or 0
end
for q, n in pairs(woke) do wake(q, n) end
return out
