-- ARGV[4..]: two arguments per job: a msgpack array of its fields (see `codec.enqueue_args`;
-- numbers travel as strings so Lua never rounds them) and its payload, raw (Redis 7.0's
-- cmsgpack cannot unpack msgpack `bin`). Returns 1 (stored) or 0 (duplicate key) per job.
-- One INCRBY reserves the sequence numbers of the whole call.
local out, woke = {}, {}
local OPTIONAL = {[9] = 'timeout', [10] = 'deadline', [11] = 'key', [12] = 'unique_until',
                  [14] = 'meta'}
local jobs = {}
for a = 4, #ARGV - 1, 2 do
  local j = cmsgpack.unpack(ARGV[a])
  j[3] = ARGV[a + 1]
  jobs[#jobs + 1] = j
end
if #jobs == 0 then return out end
local last = redis.call('INCRBY', slot(jobs[1][4]) .. ':seq', #jobs)
for k, j in ipairs(jobs) do
  local id, q, key = j[1], j[4], j[11]
  local jk = jkey(q, id)
  if redis.call('EXISTS', jk) == 1 then
    out[k] = 1  -- a retried call that already landed
  elseif key ~= '' and holder_of(q, key) then
    out[k] = 0
  else
    if key ~= '' then redis.call('HSET', slot(q) .. ':uniq', key, id) end
    local seq = last - #jobs + k
    local run_at = tonumber(j[6]) or 0
    local state = (run_at > NOW) and 'scheduled' or 'queued'
    local f = {'id', id, 'task', j[2], 'payload', j[3], 'queue', q, 'priority', j[5],
               'run_at', j[6], 'enqueued_at', j[7], 'attempts', '0', 'max_attempts', j[8],
               'keep_for', j[13], 'seq', tostring(seq), 'token', '0', 'state', state}
    for off, name in pairs(OPTIONAL) do
      local v = j[off]
      if v ~= '' then f[#f + 1] = name; f[#f + 1] = v end
    end
    if state == 'queued' then
      redis.call('ZADD', qkey(q, 'ready'), 0, rank(j[5], j[6], seq, id))
      woke[q] = (woke[q] or 0) + 1
    else
      redis.call('ZADD', qkey(q, 'scheduled'), j[6], id)
    end
    redis.call('HSET', jk, unpack(f))
    index(q, id, seq, nil, state)
    out[k] = 1
  end
end
for q, n in pairs(woke) do wake(q, n - handoff(q, n)) end
return out
