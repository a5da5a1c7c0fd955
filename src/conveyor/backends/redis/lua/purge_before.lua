-- ARGV[4] before, [5] state, [6] queue, [7..] candidate ids (from the state index).
-- Deletes those that finished before `before`; returns their ids.
local before, st, q = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local out = {}
for a = 7, #ARGV do
  local id = ARGV[a]
  local jk = jkey(q, id)
  local h = redis.call('HMGET', jk, 'state', 'finished_at')
  if h[1] == st and (tonumber(h[2]) or before) < before then
    release_key(q, jk, id)
    redis.call('DEL', jk)
    redis.call('ZREM', qkey(q, 'expires:' .. st), id)
    redis.call('ZREM', qkey(q, 'state:' .. st), id)
    out[#out + 1] = id
  end
end
return out
