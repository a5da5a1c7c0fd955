-- ARGV[4..]: (queue, id, token, checkpoint op, checkpoint, progress op, progress) per lease;
-- an op is "" (leave it), "s" (set it) or "d" (clear it). Returns 1 or 0 (stale) per lease.
local out = {}
for i = 4, #ARGV, 7 do
  local jk = jkey(ARGV[i], ARGV[i + 1])
  local h = redis.call('HMGET', jk, 'state', 'token')
  local r = 0
  if h[1] == 'running' and h[2] == ARGV[i + 2] then
    local names = {'checkpoint', 'progress'}
    for k = 1, 2 do
      local op, value = ARGV[i + 1 + 2 * k], ARGV[i + 2 + 2 * k]
      if op == 's' then
        redis.call('HSET', jk, names[k], value)
      elseif op == 'd' then
        redis.call('HDEL', jk, names[k])
      end
    end
    r = 1
  end
  out[#out + 1] = r
end
return out
