-- ARGV[4..]: per job, a msgpack array of its fields in the order of E (see
-- `codec.enqueue_args`; numbers travel as strings so Lua never rounds them; those in
-- E_UNSET may be '', left unset), then its bytes fields (E_RAW: the payload), raw (Redis 7.0's cmsgpack cannot
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
local f = {}  -- one HSET argument list, reused by every job (HSET copies what it gets)
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
    f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8] =
      'attempts', '0', 'seq', tostring(seq), 'token', '0', 'state', state
    local n = 8
    for _, i in ipairs(E_SET) do f[n + 1] = E[i]; f[n + 2] = j[i]; n = n + 2 end
    for _, i in ipairs(E_UNSET) do
      local v = j[i]
      if v ~= '' then f[n + 1] = E[i]; f[n + 2] = v; n = n + 2 end
    end
    if state == 'queued' then
      redis.call('ZADD', qkey(q, 'ready'), 0, rank(j[E_PRIORITY], run_at, seq, id))
      woke[q] = (woke[q] or 0) + 1
    else
      redis.call('ZADD', qkey(q, 'scheduled'), run_at, id)
    end
    redis.call('HSET', jk, unpack(f, 1, n))
    index(q, id, seq, nil, state)
    out[k] = 1
  end
end
for q, n in pairs(woke) do
  if not is_paused(q) then wake(q, n - handoff(q, n)) end  -- a paused queue wakes nobody
end
return out
