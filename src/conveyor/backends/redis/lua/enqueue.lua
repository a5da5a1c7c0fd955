-- ARGV[4..]: per job, a msgpack array of its fields in the order of E (see
-- `codec.enqueue_args`; numbers travel as strings so Lua never rounds them; those in
-- E_UNSET may be '', left unset; the last, waiting_for (the holds), is there only when set),
-- then its bytes fields (E_RAW: the payload), raw (Redis 7.0's cmsgpack cannot unpack
-- msgpack `bin`). A job with holds is stored waiting, `waiting_for` its holds plus its live
-- parents. Returns per job 1 (stored) or the id of the job holding its key (a duplicate,
-- skipped); or {{child, parent}} and nothing written when a parent is neither earlier in the
-- call nor stored. One INCRBY reserves the sequence numbers of the whole call.
local out, woke, lanes_woke = {}, {}, {}
local step = 1 + #E_RAW
local jobs = {}
local graph = false
for a = 4, #ARGV - step + 1, step do
  local j = cmsgpack.unpack(ARGV[a])
  for r, at in ipairs(E_RAW) do j[at] = ARGV[a + r] end
  jobs[#jobs + 1] = j
  if j[E_PARENTS] ~= '' then graph = true end
end
if #jobs == 0 then return out end
if graph then
  -- First pass, before anything is written: every parent is earlier in the call or stored
  -- (the caller checked, but a purge may have deleted one since).
  local earlier = {}
  for _, j in ipairs(jobs) do
    for p in string.gmatch(j[E_PARENTS], '[^,]+') do
      if not earlier[p] and redis.call('EXISTS', jkey(j[E_QUEUE], p)) == 0 then
        return {{j[E_ID], p}}
      end
    end
    earlier[j[E_ID]] = true
  end
end

-- A job with parents, as stored: its state (waiting, cancelled, or nil: by its run_at and
-- holds), its
-- parents (a duplicate's id replaced by its key's holder), and for a waiting job the
-- parents it waits for as {queue, id}, each once; for a cancelled one the reason.
local renamed = {}
local function blocked(j)
  local q, policy = j[E_QUEUE], j[E_ON_PARENT_FAILURE]
  local parents, live, seen, reason = {}, {}, {}, nil
  local changed = false
  for p in string.gmatch(j[E_PARENTS], '[^,]+') do
    if renamed[p] then p = renamed[p]; changed = true end
    parents[#parents + 1] = p
    if not seen[p] then
      seen[p] = true
      local h = redis.call('HMGET', jkey(q, p), 'state', 'queue')
      local st = h[1]
      if st == 'completed' or st == 'failed' or st == 'cancelled' then
        if st ~= 'completed' and policy ~= 'run' and not reason then
          reason = 'parent ' .. p .. ' ' .. st
        end
      else
        live[#live + 1] = {h[2] or q, p}
      end
    end
  end
  local text = changed and table.concat(parents, ',') or nil
  if reason then return 'cancelled', text, nil, reason end
  if live[1] then return 'waiting', text, live end
  return nil, text
end

local last = redis.call('INCRBY', slot(jobs[1][E_QUEUE]) .. ':seq', #jobs)
local f = {}  -- one HSET argument list, reused by every job (HSET copies what it gets)
for k, j in ipairs(jobs) do
  local id, q, key = j[E_ID], j[E_QUEUE], j[E_KEY]
  local jk = jkey(q, id)
  local holder = nil
  if redis.call('EXISTS', jk) == 1 then
    out[k] = 1  -- a retried call that already landed
  else
    holder = key ~= '' and holder_of(q, key)
  end
  if holder then
    out[k] = holder
    renamed[id] = holder
  elseif not out[k] then
    local seq = last - #jobs + k
    local run_at = j[E_RUN_AT]
    local state, parents, live, reason
    local holds = tonumber(j[E_WAITING_FOR])  -- nil for none (the producer's holds, see `link`)
    if holds == 0 then holds = nil end
    local lane = j[E_LANE]  -- nil for a plain job (see `scripts.BY_HAND`)
    if j[E_PARENTS] ~= '' then
      state, parents, live, reason = blocked(j)
      if parents then j[E_PARENTS] = parents end
    end
    if holds and state ~= 'cancelled' then state = 'waiting' end
    state = state or (((tonumber(run_at) or 0) > NOW) and 'scheduled' or 'queued')
    if key ~= '' and state ~= 'cancelled' then redis.call('HSET', slot(q) .. ':uniq', key, id) end
    f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8] =
      'attempts', '0', 'seq', tostring(seq), 'token', '0', 'state', state
    local n = 8
    for _, i in ipairs(E_SET) do f[n + 1] = E[i]; f[n + 2] = j[i]; n = n + 2 end
    for _, i in ipairs(E_UNSET) do
      local v = j[i]
      if v ~= '' then f[n + 1] = E[i]; f[n + 2] = v; n = n + 2 end
    end
    if lane then
      for _, i in ipairs({E_LANE, E_WEIGHT, E_CONCURRENCY, E_RATE, E_BURST, E_CIRCUIT}) do
        f[n + 1], f[n + 2] = E[i], j[i]
        n = n + 2
      end
    end
    if state == 'queued' and lane then
      -- (counted apart: the handoff never hands a lane job, only wakes for it)
      if FL.ready(q, id, rank(j[E_PRIORITY], run_at, seq, id), lane, j[E_WEIGHT],
                  j[E_CONCURRENCY], j[E_RATE], j[E_BURST], j[E_CIRCUIT]) then
        lanes_woke[q] = (lanes_woke[q] or 0) + 1
      end
    elseif state == 'queued' then
      redis.call('ZADD', qkey(q, 'ready'), 0, rank(j[E_PRIORITY], run_at, seq, id))
      woke[q] = (woke[q] or 0) + 1
    elseif state == 'scheduled' then
      redis.call('ZADD', qkey(q, 'scheduled'), run_at, id)
    elseif state == 'waiting' then
      f[n + 1], f[n + 2] = 'waiting_for', (live and #live or 0) + (holds or 0)
      n = n + 2
      local member = q .. '|' .. id
      for _, p in ipairs(live or {}) do
        redis.call('SADD', children_key(p[1], p[2]), member)
        redis.call('HSET', jkey(p[1], p[2]), 'children', 1)
      end
    end
    redis.call('HSET', jk, unpack(f, 1, n))
    if state == 'cancelled' then
      redis.call('HSET', jk, 'cancel_reason', reason)
      finish(q, jk, id, seq, nil, 'cancelled', j[E_KEEP_FOR], nil, false)
    else
      index(q, id, seq, nil, state)
    end
    out[k] = 1
  end
end
for q, n in pairs(woke) do
  if not is_paused(q) then wake(q, n - handoff(q, n)) end  -- a paused queue wakes nobody
end
for q, n in pairs(lanes_woke) do
  if not is_paused(q) then wake(q, n) end
end
return out
