-- ARGV[4..]: per job, a msgpack array of its fields in the order of E (see
-- `codec.enqueue_args`; numbers travel as strings so Lua never rounds them, '' is a field
-- left unset), then its bytes fields (E_RAW: the payload), raw (Redis 7.0's cmsgpack cannot
-- unpack msgpack `bin`). Returns 1 (stored) or 0 (duplicate key) per job. One INCRBY
-- reserves the sequence numbers of the whole call.
local out, woke = {}, {}
local step = 1 + #E_RAW
local jobs = {}
for a = 4, #ARGV - step + 1, step do
  local j = cmsgpack.unpack(ARGV[a])
  for r, at in ipairs(E_RAW) do j[at] = ARGV[a + r] end
  jobs[#jobs + 1] = j
end
if #jobs == 0 then return out end
local last = redis.call('INCRBY', slot(jobs[1][E_QUEUE]) .. ':seq', #jobs)
for k, j in ipairs(jobs) do
  local id, q, key = j[E_ID], j[E_QUEUE], j[E_KEY]
  local jk = jkey(q, id)
  if redis.call('EXISTS', jk) == 1 then
    out[k] = 1  -- a retried call that already landed
  elseif key ~= '' and holder_of(q, key) then
    out[k] = 0
  else
    if key ~= '' then redis.call('HSET', slot(q) .. ':uniq', key, id) end
    local seq = last - #jobs + k
    local run_at = j[E_RUN_AT]
    local state = ((tonumber(run_at) or 0) > NOW) and 'scheduled' or 'queued'
    local f = {'attempts', '0', 'seq', tostring(seq), 'token', '0', 'state', state}
    for i, name in ipairs(E) do
      local v = j[i]
      if v ~= '' then f[#f + 1] = name; f[#f + 1] = v end
    end
    if state == 'queued' then
      redis.call('ZADD', qkey(q, 'ready'), 0, rank(j[E_PRIORITY], run_at, seq, id))
      woke[q] = (woke[q] or 0) + 1
    else
      redis.call('ZADD', qkey(q, 'scheduled'), run_at, id)
    end
    redis.call('HSET', jk, unpack(f))
    index(q, id, seq, nil, state)
    out[k] = 1
  end
end
for q, n in pairs(woke) do wake(q, n - handoff(q, n)) end
return out
