-- ARGV[4..]: (queue, id) pairs, all in one slot. Deletes each job that has ended (completed,
-- failed or cancelled), as purge does; returns 1 or 0 per pair.
local out = {}
for a = 4, #ARGV - 1, 2 do
  local q, id = ARGV[a], ARGV[a + 1]
  local jk = jkey(q, id)
  local st = redis.call('HGET', jk, 'state')
  if st == 'completed' or st == 'failed' or st == 'cancelled' then
    release_key(q, jk, id)
    redis.call('DEL', jk)
    redis.call('ZREM', qkey(q, 'expires:' .. st), id)
    redis.call('ZREM', qkey(q, 'state:' .. st), id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
