-- The helpers every script shares. Loaded after the generated header (see `scripts.py`),
-- which defines from Python's tables: F (the job hash fields every read returns, in order),
-- F_CLAIM (F, then seq and token), I_<FIELD> (each field's index in F_CLAIM: I_STATE,
-- I_ATTEMPTS, ..., I_SEQ, I_TOKEN), RANK_WIDTH and KNOWN (the set of job states).
-- (No calls to Lua's library at the top level: FUNCTION LOAD runs it without them.)

-- Set by `begin` at the start of every call (see `run`).
local FL = {cache = {}, turns = {}}  -- flow control: lanes (see below)
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
  FL.cache, FL.turns = {}, {}
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

-- Flow control (see `Backend.claim`). Every key of a lane is in its queue's slot:
--   q:<q>:lane:<name>        HASH  the lane's state (fields below; absent = defaults)
--   q:<q>:lane_ready:<name>  ZSET  its queued jobs, members ranked as in q's ready set
--   q:<q>:lane_slots:<name>  SET   ids of its running jobs (its slots)
--   q:<q>:lanes              ZSET  the ELIGIBLE lanes (ready jobs and capacity) by pass
--   q:<q>:lanes_parked       ZSET  lanes with ready jobs parked on a timer, by wake time
--   q:<q>:lanes_all          SET   every lane with state (for `lanes`; stale names pruned)
--   q:<q>:turns              HASH  v (pass of the last job served), pp (the plain jobs'
--                                  pass), pa ('1': plain jobs were ready at the last turns)
-- Lane state fields: w weight, c concurrency, r rate, b burst, cs circuit spec, p pass,
-- e '1' while in `lanes`, k '1' while in `lanes_parked`, t tokens, ta tokens_at, st
-- circuit state ('' closed, 'open', 'half_open'), u open until ('' none), ws window start,
-- n calls, f failures, pr probe id, x '1' while the hash has a ttl (the lane idle).
-- Loaded once per call into FL.cache and written back by FL.flush (from `run`).
-- (One table, not locals: the FUNCTION library is near Lua's 200 locals per chunk.)
FL.FIELDS = {'w', 'c', 'r', 'b', 'cs', 'p', 'e', 'k', 't', 'ta', 'st', 'u', 'ws', 'n', 'f', 'pr',
             'x'}
function FL.key(q, name, what) return qkey(q, what .. ':' .. name) end
function FL.get(q, name)
  local id = q .. '|' .. name
  local L = FL.cache[id]
  if L then return L end
  local h = redis.call('HMGET', FL.key(q, name, 'lane'), unpack(FL.FIELDS))
  L = {q = q, name = name, new = h[1] == false or h[1] == nil,
       w = tonumber(h[1]) or 1, c = tonumber(h[2]) or 0, r = tonumber(h[3]) or 0,
       b = tonumber(h[4]) or 0, cs = h[5] or '', p = tonumber(h[6]) or 0, e = h[7] == '1',
       k = h[8] == '1', t = tonumber(h[9]), ta = tonumber(h[10]) or NOW, st = h[11] or '',
       u = tonumber(h[12]), ws = tonumber(h[13]), n = tonumber(h[14]) or 0,
       f = tonumber(h[15]) or 0, pr = h[16] or '', x = h[17] == '1', dirty = false}
  if L.t == nil then L.t = L.b end
  FL.cache[id] = L
  return L
end
function FL.running(L)
  if L.nrun == nil then L.nrun = redis.call('SCARD', FL.key(L.q, L.name, 'lane_slots')) end
  return L.nrun
end
function FL.vtime(q)
  local T = FL.turns[q]
  if not T then
    local h = redis.call('HMGET', qkey(q, 'turns'), 'v', 'pp', 'pa')
    T = {v = tonumber(h[1]) or 0, pp = tonumber(h[2]) or 0, pa = h[3] == '1'}
    FL.turns[q] = T
  end
  return T
end
-- The circuit spec "<failure_rate>:<window>:<cooldown>:<min_calls>" as numbers.
function FL.spec(cs)
  local a, b, c, d = string.match(cs, '^([^:]+):([^:]+):([^:]+):([^:]+)$')
  return tonumber(a) or 1, tonumber(b) or 60, tonumber(c) or 60, tonumber(d) or 1
end
function FL.close(L)
  L.st, L.u, L.pr, L.ws, L.n, L.f = '', nil, '', nil, 0, 0
end
function FL.open_for(L, duration)
  L.st, L.pr = 'open', ''
  L.u = duration and (NOW + duration) or nil
end
function FL.refill(L)
  if L.r > 0 then L.t = math.min(L.b, L.t + math.max(0, NOW - L.ta) * L.r) end
  L.ta = NOW
  if L.st == 'open' and L.u and L.u <= NOW then
    if L.cs ~= '' then L.st, L.u = 'half_open', nil else FL.close(L) end
    L.dirty = true
  end
end
function FL.can_take(L)
  FL.refill(L)
  if L.r > 0 and L.t < 1 then return false end
  if L.st == 'open' then return false end
  if L.st == 'half_open' and L.pr ~= '' then return false end
  return not (L.c > 0 and FL.running(L) >= L.c)
end
function FL.wake_at(L)
  if L.st == 'open' then return L.u end
  if L.r > 0 and L.t < 1 then return NOW + (1 - L.t) / L.r end
  return nil
end
-- Take the limits and weight of a job becoming ready (h: lane, weight, concurrency, rate,
-- burst, circuit as read from its hash).
function FL.configure(L, w, c, r, b, cs)
  L.w, L.c, L.r, L.b, L.cs = math.max(1, tonumber(w) or 1), tonumber(c) or 0,
                             tonumber(r) or 0, tonumber(b) or 0, cs or ''
  if L.new then L.t, L.ta, L.new = L.b, NOW, false end
  L.t = math.min(L.t, L.b)
  L.dirty = true
end
-- Put L where it belongs now: eligible (entering at max(own pass, the queue's virtual
-- time)), parked on a timer, or parked until a slot returns / a job is ready (neither
-- zset). `ready`: whether it has ready jobs (nil: look). Returns true if it became eligible.
function FL.place(L, ready)
  if ready == nil then
    ready = redis.call('EXISTS', FL.key(L.q, L.name, 'lane_ready')) == 1
  end
  local ok = ready and FL.can_take(L)
  local became = false
  if ok then
    if not L.e then
      L.p = math.max(L.p, FL.vtime(L.q).v)
      L.e, became = true, true
      redis.call('ZADD', qkey(L.q, 'lanes'), L.p, L.name)
    end
    if L.k then L.k = false; redis.call('ZREM', qkey(L.q, 'lanes_parked'), L.name) end
  else
    if L.e then L.e = false; redis.call('ZREM', qkey(L.q, 'lanes'), L.name) end
    local at = ready and FL.wake_at(L)
    if at then
      L.k = true
      redis.call('ZADD', qkey(L.q, 'lanes_parked'), at, L.name)
    elseif L.k then
      L.k = false
      redis.call('ZREM', qkey(L.q, 'lanes_parked'), L.name)
    end
  end
  L.dirty = true
  return became
end
-- Lane job `id` (ranked `rk`) became ready: into its lane's zset, the lane configured by it.
-- Returns true if the lane is eligible (someone to wake).
function FL.ready(q, id, rk, name, w, c, r, b, cs)
  redis.call('ZADD', FL.key(q, name, 'lane_ready'), 0, rk)
  local L = FL.get(q, name)
  FL.configure(L, w, c, r, b, cs)
  FL.place(L, true)
  return L.e
end
-- Lane job `id` left running; outcome 'success', 'failure' or nil (cancel, release). Its
-- slot comes back, its circuit counts it; waiters are woken if the lane became eligible.
function FL.left(q, id, name, outcome)
  local L = FL.get(q, name)
  if redis.call('SREM', FL.key(q, name, 'lane_slots'), id) == 1 and L.nrun then
    L.nrun = L.nrun - 1
  end
  FL.refill(L)
  if L.pr ~= '' and L.pr == id then
    L.pr = ''
    if outcome == 'success' then FL.close(L)
    elseif outcome == 'failure' then
      local _, _, cooldown = FL.spec(L.cs)
      FL.open_for(L, cooldown)
    end
  elseif L.cs ~= '' and outcome and L.st == '' then
    local rate, window, cooldown, min_calls = FL.spec(L.cs)
    if not L.ws or NOW >= L.ws + window then L.ws, L.n, L.f = NOW, 0, 0 end
    L.n = L.n + 1
    if outcome == 'failure' then L.f = L.f + 1 end
    if L.n >= min_calls and L.f >= rate * L.n then FL.open_for(L, cooldown) end
  end
  if FL.place(L) then wake(q, 1) end
end
-- How long an idle lane's state must outlive its last job: its bucket refills, its window
-- and cooldown pass. nil: keep it (open by hand until closed).
function FL.ttl(L)
  if L.st == 'open' and not L.u then return nil end
  local s = 1
  if L.r > 0 then s = math.max(s, (L.b - L.t) / L.r) end
  if L.cs ~= '' then
    local _, window, cooldown = FL.spec(L.cs)
    s = math.max(s, window + cooldown)
  end
  if L.u then s = math.max(s, L.u - NOW) end
  return s + 1
end
function FL.flush()
  for _, L in pairs(FL.cache) do
    if L.dirty then
      local key = FL.key(L.q, L.name, 'lane')
      local idle = not L.e and not L.k and not L.busy and FL.running(L) == 0
                   and redis.call('EXISTS', FL.key(L.q, L.name, 'lane_ready')) == 0
      local ttl = idle and FL.ttl(L)
      if ttl then L.x = true elseif L.x then L.x = false; redis.call('PERSIST', key) end
      local created = redis.call('HSET', key, 'w', L.w, 'c', L.c, 'r', num(L.r), 'b', L.b,
        'cs', L.cs, 'p', num(L.p), 'e', L.e and '1' or '', 'k', L.k and '1' or '',
        't', num(L.t), 'ta', num(L.ta), 'st', L.st, 'u', L.u and num(L.u) or '',
        'ws', L.ws and num(L.ws) or '', 'n', L.n, 'f', L.f, 'pr', L.pr, 'x', L.x and '1' or '')
      if created > 0 then redis.call('SADD', qkey(L.q, 'lanes_all'), L.name) end
      if ttl then redis.call('PEXPIRE', key, math.ceil(ttl * 1000)) end
    end
  end
  FL.cache = {}
  for q, T in pairs(FL.turns) do
    if T.dirty then
      redis.call('HSET', qkey(q, 'turns'), 'v', num(T.v), 'pp', num(T.pp), 'pa', T.pa and '1' or '')
    end
  end
  FL.turns = {}
end
-- Due parked lanes back to eligible (claims and waits look first). Returns how many.
function FL.unpark(q)
  local due = redis.call('ZRANGEBYSCORE', qkey(q, 'lanes_parked'), '-inf', NOW_S, 'LIMIT', 0, 100)
  for _, name in ipairs(due) do
    local L = FL.get(q, name)
    L.k = false
    redis.call('ZREM', qkey(q, 'lanes_parked'), name)
    FL.place(L)
  end
  return #due
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

-- A job becomes ready: into q's ready set, or a lane job into its lane's (see `FL.ready`).
local function to_ready(q, jk, id, from)
  local h = redis.call('HMGET', jk, 'priority', 'run_at', 'seq', 'lane', 'weight',
                       'concurrency', 'rate', 'burst', 'circuit')
  local rk = rank(h[1], h[2], h[3], id)
  if h[4] and h[4] ~= '' then
    FL.ready(q, id, rk, h[4], h[5], h[6], h[7], h[8], h[9])
  else
    redis.call('ZADD', qkey(q, 'ready'), 0, rk)
  end
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
                       'children', 'lane')
  if h[1] ~= 'running' or h[2] ~= token then return false end
  zrem_later(qkey(q, 'running'), id)
  if h[7] then FL.left(q, id, h[7], nil) end  -- a release counts for no circuit
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
  if next(FL.cache) or next(FL.turns) then FL.flush() end
  flush_later()
  return result
end
