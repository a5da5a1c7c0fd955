-- The helpers every script shares. Loaded after the generated header (see `scripts.py`),
-- which defines from Python's tables: F (the job hash fields every read returns, in order),
-- F_CLAIM (F, then seq and token), I_<FIELD> (each field's index in F_CLAIM: I_STATE,
-- I_ATTEMPTS, ..., I_SEQ, I_TOKEN), RANK_WIDTH and KNOWN (the set of job states).
-- (No calls to Lua's library at the top level: FUNCTION LOAD runs it without them.)

-- Set by `begin` at the start of every call (see `run`).
local PREFIX, CLUSTER, NOW, NOW_S
local ZADDS, ZREMS, ZPOS = {}, {}, {}
-- Parents that ended in this call with children to tell: {queue, id, state} (see `finish`).
local ENDED = {}

local function num(x) return string.format('%.17g', x) end

-- Every call starts here: the prefix, cluster mode and the time ("now" from the caller, or
-- the server's clock), and empty deferred-write buffers.
local function begin(ARGV)
  PREFIX, CLUSTER = ARGV[1], ARGV[2] == '1'
  NOW = tonumber(ARGV[3])
  if not NOW then
    local t = redis.call('TIME')
    NOW = tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  NOW_S = num(NOW)
  ZADDS, ZREMS, ZPOS = {}, {}, {}
  ENDED = {}
end

-- The hash tag every key of queue q shares: one slot per queue in cluster mode, one slot
-- for the whole prefix otherwise (so unique keys and queries span queues).
local function slot(q)
  if CLUSTER then return '{' .. PREFIX .. ':' .. q .. '}' end
  return '{' .. PREFIX .. '}'
end
local function qkey(q, name) return slot(q) .. ':q:' .. q .. ':' .. name end
local function jkey(q, id) return slot(q) .. ':job:' .. id end

-- Ready-set members sort (lexicographically, all scores 0) by priority desc, run_at, seq.
-- Not stored in the job hash (recomputed where needed): a field that long (> 64 bytes)
-- would make Redis store every job hash as a hashtable, 3.5x the memory of a listpack.
local function rank(pri, run_at, seq, id)
  local p = math.max(-999999999999, math.min(999999999999, tonumber(pri) or 0))
  local r = math.max(0, math.min(99999999999999999, math.floor((tonumber(run_at) or 0) * 1000000)))
  return string.format('%013d%017d%016d', 1000000000000 - p, r, tonumber(seq) or 0) .. id
end

-- Sorted-set writes that only scripts' callers read (indexes, `running`, `expires:*`) are
-- collected per key and sent as one ZREM and one ZADD per key when the script ends (see
-- `run`): each redis.call costs a few µs of its own, so this is most of a batch's time
-- saved. Removals are sent before additions. Per member the last write wins, as if each had
-- been sent at once: a job promoted and then claimed in one call ends up in `state:running`
-- alone, not also in `state:queued`. The hot paths only add to some keys and only remove
-- from others, so writes stay plain arrays; a key gets a member → position map (ZPOS) only
-- when a removal meets pending additions to it.
local function positions(key, adds)
  local pos = ZPOS[key]
  if not pos then
    pos = {}
    for i = 2, #adds, 2 do pos[adds[i]] = i end
    ZPOS[key] = pos
  end
  return pos
end
local function zrem_later(key, member)
  local adds = ZADDS[key]
  if adds then
    local at = positions(key, adds)[member]
    if at then adds[at] = false end  -- a pending addition of it is void
  end
  local t = ZREMS[key]
  if not t then t = {}; ZREMS[key] = t end
  t[#t + 1] = member
end
local function zadd_later(key, score, member)
  local t = ZADDS[key]
  if not t then t = {}; ZADDS[key] = t end
  local pos = ZPOS[key]
  local at = pos and pos[member]
  if at then  -- added (and maybe voided) before in this call: this write wins
    t[at - 1], t[at] = score, member
    return
  end
  t[#t + 1] = score
  t[#t + 1] = member
  if pos then pos[member] = #t end
end
local function flush_later()
  for key, t in pairs(ZREMS) do redis.call('ZREM', key, unpack(t)) end
  for key, t in pairs(ZADDS) do
    if ZPOS[key] then  -- drop voided additions
      local kept, n = {}, 0
      for i = 2, #t, 2 do
        if t[i] then kept[n + 1] = t[i - 1]; kept[n + 2] = t[i]; n = n + 2 end
      end
      t = kept
    end
    if t[1] then redis.call('ZADD', key, unpack(t)) end
  end
end

-- Per-state index, scored by seq: counts (ZCARD) and queries (enqueue order).
local function index(q, id, seq, from, to)
  if from then zrem_later(qkey(q, 'state:' .. from), id) end
  if to then zadd_later(qkey(q, 'state:' .. to), tonumber(seq) or 0, id) end
end

local function wake(q, n)
  if n <= 0 then return end
  local tokens = {}
  for i = 1, math.min(n, 64) do tokens[i] = '1' end
  local w = qkey(q, 'wake')
  redis.call('LPUSH', w, unpack(tokens))
  redis.call('LTRIM', w, 0, 63)
end

-- Lease job `id` (its hash read as F_CLAIM into `h`) to `worker` until `expires`; `h` is
-- patched into the reply row (FIELDS only). Returns the new token, or nil for a stray
-- member (the job is gone or in another known state). A garbage state is leased, so the
-- worker fails the job with the reason.
local function lease_job(q, id, h, worker, expires, expires_s)
  local st = h[I_STATE]
  if not (st == 'queued' or (st and not KNOWN[st])) then return nil end
  local token = (tonumber(h[I_TOKEN]) or 0) + 1
  local attempts = (tonumber(h[I_ATTEMPTS]) or 0) + 1
  redis.call('HSET', jkey(q, id), 'state', 'running', 'attempts', attempts, 'token', token,
             'worker', worker, 'started_at', NOW_S, 'lease', expires_s)
  zadd_later(qkey(q, 'running'), expires, id)
  zrem_later(qkey(q, 'state:queued'), id)
  zadd_later(qkey(q, 'state:running'), tonumber(h[I_SEQ]) or 0, id)
  h[I_STATE], h[I_ATTEMPTS], h[I_STARTED_AT], h[I_WORKER] = 'running', tostring(attempts),
                                                           NOW_S, worker
  h[I_TOKEN], h[I_SEQ] = nil, nil
  return token
end

-- Direct handoff. An idle worker registers as a waiter on its queues (WAIT) and blocks on
-- its inbox; an enqueue that finds a waiter leases the best ready job to it and pushes the
-- lease into the inbox, so the job starts one round trip after it was stored. A waiter's
-- registration ends when it is handed a job, when it claims, or at its deadline.
local function waiting_key(w) return slot('') .. ':waiting:' .. w end
local function inbox_key(w) return slot('') .. ':inbox:' .. w end

local function unregister(w)
  local reg = waiting_key(w)
  local qs = redis.call('HGET', reg, 'queues')
  if not qs then return nil end
  for q in string.gmatch(qs, '[^,]+') do redis.call('ZREM', qkey(q, 'waiters'), w) end
  local lease_for = redis.call('HGET', reg, 'lease_for')
  redis.call('DEL', reg)
  return lease_for
end

-- An inbox entry: token, expires, then the FIELDS, each as <length>:<bytes> or '-' for none.
local function pack_lease(token, expires_s, h)
  local parts = {#tostring(token) .. ':' .. token, #expires_s .. ':' .. expires_s}
  for i = 1, #F do
    local v = h[i]
    if v then parts[#parts + 1] = #v .. ':' .. v else parts[#parts + 1] = '-' end
  end
  return table.concat(parts)
end

-- Whether q is paused (`pause.lua`): claims, waits and the handoff skip it.
local function is_paused(q) return redis.call('EXISTS', qkey(q, 'paused')) == 1 end

-- Hand up to n of q's ready jobs to live waiters; returns how many were handed. Never a
-- job of a paused queue.
local function handoff(q, n)
  local wkey = qkey(q, 'waiters')
  if CLUSTER or redis.call('EXISTS', wkey) == 0 or is_paused(q) then return 0 end
  redis.call('ZREMRANGEBYSCORE', wkey, '-inf', NOW_S)
  local handed = 0
  while handed < n do
    local w = redis.call('ZRANGE', wkey, 0, 0)[1]
    if not w then break end
    local lease_for = tonumber(unregister(w))
    if lease_for then
      local popped = redis.call('ZPOPMIN', qkey(q, 'ready'), 1)
      if not popped[1] then break end
      local id = string.sub(popped[1], RANK_WIDTH + 1)
      local h = redis.call('HMGET', jkey(q, id), unpack(F_CLAIM))
      local expires = NOW + lease_for
      local expires_s = num(expires)
      local token = lease_job(q, id, h, w, expires, expires_s)
      if token then
        redis.call('RPUSH', inbox_key(w), pack_lease(token, expires_s, h))
        handed = handed + 1
      end
    else
      redis.call('ZREM', wkey, w)  -- a registration without its record
    end
  end
  return handed
end

local function to_ready(q, jk, id, from)
  local h = redis.call('HMGET', jk, 'priority', 'run_at', 'seq')
  local rk = rank(h[1], h[2], h[3], id)
  redis.call('ZADD', qkey(q, 'ready'), 0, rk)
  redis.call('HSET', jk, 'state', 'queued')
  index(q, id, h[3], from, 'queued')
end

local function to_scheduled(q, jk, id, seq, from, run_at)
  redis.call('ZADD', qkey(q, 'scheduled'), run_at, id)
  redis.call('HSET', jk, 'state', 'scheduled')
  index(q, id, seq, from, 'scheduled')
end

-- Dependencies. A parent's waiting children are the set `children_key(q, id)` in the
-- parent's slot, each member `<child queue>|<child id>` ('|' is outside the queue-name
-- alphabet, so the first one splits); while it may hold members the parent's hash has
-- `children` = 1, which the settle reads with its other fields, so a job without children
-- pays no extra call when it ends.
local function children_key(q, id) return qkey(q, 'children:' .. id) end

-- The common terminal path. `keep` is the job's keep_for if the caller read it already;
-- `also` one more field to drop; `kids` the job's `children` field if the caller read it
-- (nil: look). A job with children is noted in ENDED: `run` tells them before the call ends.
local function finish(q, jk, id, seq, from, state, keep, also, kids)
  keep = tonumber(keep or redis.call('HGET', jk, 'keep_for')) or 86400
  redis.call('HSET', jk, 'state', state, 'finished_at', NOW_S)
  if also then redis.call('HDEL', jk, 'worker', 'lease', also)
  else redis.call('HDEL', jk, 'worker', 'lease') end
  zadd_later(qkey(q, 'expires:' .. state), NOW + keep, id)
  index(q, id, seq, from, state)
  if kids == nil then kids = redis.call('HEXISTS', jk, 'children') == 1 end
  if kids then ENDED[#ENDED + 1] = {q, id, state} end
end

local function append_error(jk, errors, e)
  -- A history that is not a JSON array (written by hand) is replaced, not extended.
  if not errors or errors == '' or errors == '[]' or string.sub(errors, 1, 1) ~= '['
     or not pcall(cjson.decode, errors) then
    redis.call('HSET', jk, 'errors', '[' .. e .. ']')
  else
    redis.call('HSET', jk, 'errors', string.sub(errors, 1, -2) .. ',' .. e .. ']')
  end
end

local function release_key(q, jk, id)
  local key = redis.call('HGET', jk, 'key')
  if key then
    local u = slot(q) .. ':uniq'
    if redis.call('HGET', u, key) == id then redis.call('HDEL', u, key) end
  end
end

-- A lease on a job that never started, given back (fenced by its token): queued again with
-- the attempt not counted, or cancelled if that was requested meanwhile. Returns true if
-- the lease was live.
local function give_back(q, id, token)
  local jk = jkey(q, id)
  local h = redis.call('HMGET', jk, 'state', 'token', 'attempts', 'cancel_requested', 'seq',
                       'children')
  if h[1] ~= 'running' or h[2] ~= token then return false end
  zrem_later(qkey(q, 'running'), id)
  if h[4] == '1' then
    finish(q, jk, id, h[5], 'running', 'cancelled', nil, nil, h[6])
    release_key(q, jk, id)
  else
    redis.call('HSET', jk, 'attempts', math.max(0, (tonumber(h[3]) or 1) - 1))
    redis.call('HDEL', jk, 'worker', 'lease', 'started_at')
    to_ready(q, jk, id, 'running')
    wake(q, 1)
  end
  return true
end

-- The id of the job holding unique key `key`, or nil (a stale holder is released here).
local function holder_of(q, key)
  local u = slot(q) .. ':uniq'
  local hid = redis.call('HGET', u, key)
  if not hid then return nil end
  local h = redis.call('HMGET', jkey(q, hid), 'state', 'unique_until')
  local st, until_ = h[1], tonumber(h[2])
  if not st or st == 'cancelled'
     or ((st == 'completed' or st == 'failed') and until_ and until_ <= NOW) then
    redis.call('HDEL', u, key)
    return nil
  end
  return hid
end

-- A waiting job with nothing left to wait for (no parent, no hold): scheduled or queued
-- by its run_at. Returns true when it is queued (someone to wake).
local function unblock(q, jk, id, run_at, seq)
  redis.call('HDEL', jk, 'waiting_for')
  if (tonumber(run_at) or 0) > NOW then
    to_scheduled(q, jk, id, seq, 'waiting', run_at)
    return false
  end
  to_ready(q, jk, id, 'waiting')
  return true
end

-- Each waiting child of a parent in ENDED counts that end, once (the parent's set goes):
-- completed, or with the child's policy "run", its `waiting_for` drops and at 0 it becomes
-- scheduled or queued; failed or cancelled otherwise, it is cancelled, naming the parent,
-- and its own children are told in turn (`finish` appends it to ENDED).
local function count_ended()
  local woke, i = {}, 1
  while ENDED[i] do
    local q, id, st = ENDED[i][1], ENDED[i][2], ENDED[i][3]
    i = i + 1
    local ck = children_key(q, id)
    local members = redis.call('SMEMBERS', ck)
    redis.call('DEL', ck)
    redis.call('HDEL', jkey(q, id), 'children')
    for _, m in ipairs(members) do
      local bar = string.find(m, '|', 1, true)
      local cq, cid = string.sub(m, 1, bar - 1), string.sub(m, bar + 1)
      local cjk = jkey(cq, cid)
      local h = redis.call('HMGET', cjk, 'state', 'waiting_for', 'on_parent_failure', 'run_at',
                           'seq', 'children')
      if h[1] == 'waiting' then  -- (a child cancelled or gone meanwhile is left alone)
        if st == 'completed' or h[3] == 'run' then
          local left = (tonumber(h[2]) or 1) - 1
          if left > 0 then
            redis.call('HSET', cjk, 'waiting_for', left)
          elseif unblock(cq, cjk, cid, h[4], h[5]) then
            woke[cq] = (woke[cq] or 0) + 1
          end
        else
          redis.call('HSET', cjk, 'cancel_reason', 'parent ' .. id .. ' ' .. st)
          finish(cq, cjk, cid, h[5], 'waiting', 'cancelled', nil, nil, h[6])
          release_key(cq, cjk, cid)
        end
      end
    end
  end
  ENDED = {}
  for q, n in pairs(woke) do
    if not is_paused(q) then wake(q, n) end  -- a paused queue wakes nobody
  end
end

local function promote_due(q, max)
  local s = qkey(q, 'scheduled')
  local due = redis.call('ZRANGEBYSCORE', s, '-inf', NOW_S, 'LIMIT', 0, max)
  for _, id in ipairs(due) do
    redis.call('ZREM', s, id)
    local jk = jkey(q, id)
    if redis.call('EXISTS', jk) == 1 then to_ready(q, jk, id, 'scheduled') end
  end
  return #due
end

-- One script call: `begin`, the script's body (`main`), then the deferred writes.
local function run(main, KEYS, ARGV)
  begin(ARGV)
  local result = main(KEYS, ARGV)
  if ENDED[1] then count_ended() end
  flush_later()
  return result
end
