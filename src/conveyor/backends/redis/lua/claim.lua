-- ARGV[4] limit, [5] lease_for, [6] worker, [7..] queues in order.
-- Returns {expires, n, inbox_1..inbox_n, token1, fields1, token2, fields2, ...}: first the
-- leases handed to this worker while it waited (packed, see `pack_lease`), then new ones.
local limit, worker = tonumber(ARGV[4]), ARGV[6]
local expires = NOW + tonumber(ARGV[5])
local expires_s = num(expires)
local handed = {}
if not CLUSTER then  -- (no handoff in cluster mode: the inbox would be in another slot)
  unregister(worker)
  handed = redis.call('LPOP', inbox_key(worker), limit) or {}
end
local out = {expires_s, #handed}
for _, entry in ipairs(handed) do out[#out + 1] = entry end
local n = #handed

-- Lease q's job `id`; false for a stray member.
local function take(q, id)
  -- The reply's fields plus seq and token, in one read; patched to what is written.
  local h = redis.call('HMGET', jkey(q, id), unpack(F_CLAIM))
  local token = lease_job(q, id, h, worker, expires, expires_s)
  if not token then return false end
  out[#out + 1] = token
  out[#out + 1] = h
  n = n + 1
  return true
end

local function take_popped(q, popped)
  for p = 1, #popped, 2 do take(q, string.sub(popped[p], RANK_WIDTH + 1)) end
end

-- The eligible lanes fetched, as a binary heap by (pass, name): the next lane served first.
local function less(a, b) return a.p < b.p or (a.p == b.p and a.name < b.name) end
local function down(heap, i)
  local size = #heap
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= size and less(heap[l], heap[m]) then m = l end
    if r <= size and less(heap[r], heap[m]) then m = r end
    if m == i then return end
    heap[i], heap[m] = heap[m], heap[i]
    i = m
  end
end
local function pop_top(heap)
  heap[1] = heap[#heap]
  heap[#heap] = nil
  if heap[1] then down(heap, 1) end
end

-- The turns of `Backend.claim` (q has eligible lanes): plain jobs (pass T.pp) and each
-- eligible lane (pass = its score in `lanes`) by the smallest pass. The `want` best lanes
-- are fetched at a time; when the best of them passes the last one's score (a bound on the
-- others) they are fetched again.
local function turns(q)
  local T = FL.vtime(q)
  T.dirty = true
  local ready = qkey(q, 'ready')
  local plain_n = redis.call('ZCARD', ready)
  if plain_n > 0 and not T.pa then T.pp = math.max(T.pp, T.v) end
  while n < limit do
    local want = limit - n
    local got = redis.call('ZRANGE', qkey(q, 'lanes'), 0, want - 1, 'WITHSCORES')
    local heap = {}
    for i = 1, #got, 2 do
      local L = FL.get(q, got[i])
      L.p, L.e = tonumber(got[i + 1]), true
      heap[#heap + 1] = L
    end
    for i = math.floor(#heap / 2), 1, -1 do down(heap, i) end
    local bound = (#heap < want) and 1e308 or tonumber(got[#got])
    local refetch = false
    while n < limit do
      local L = heap[1]
      if plain_n > 0 and T.pp <= math.min(L and L.p or 1e308, bound) then
        local k = math.min(limit - n, plain_n)
        local lp = math.min(L and L.p or 1e308, bound)
        if lp < 1e308 then k = math.min(k, math.floor(lp - T.pp) + 1) end
        local popped = redis.call('ZPOPMIN', ready, k)
        local got_n = #popped / 2
        if got_n == 0 then plain_n = 0 else
          plain_n = plain_n - got_n
          T.pp = T.pp + got_n
          T.v = T.pp - 1
          take_popped(q, popped)
        end
      elseif not L or L.p > bound then
        refetch = bound < 1e308
        break
      elseif not FL.can_take(L) then
        pop_top(heap)
        FL.place(L)
      else
        local lr = FL.key(q, L.name, 'lane_ready')
        if L.nready == nil then L.nready = redis.call('ZCARD', lr) end
        local popped = L.nready > 0 and redis.call('ZPOPMIN', lr, 1) or {}
        if not popped[1] then
          L.nready = 0
          pop_top(heap)
          FL.place(L, false)
        else
          L.nready = L.nready - 1
          local id = string.sub(popped[1], RANK_WIDTH + 1)
          if take(q, id) then
            redis.call('SADD', FL.key(q, L.name, 'lane_slots'), id)
            if L.nrun then L.nrun = L.nrun + 1 end
            if L.r > 0 then L.t = L.t - 1 end
            if L.st == 'half_open' then L.pr = id end
            T.v = L.p
            L.p = L.p + 1 / L.w
            L.dirty, L.moved, L.busy = true, true, true
          end
          if L.nready > 0 and FL.can_take(L) then
            down(heap, 1)
          else
            pop_top(heap)
            FL.place(L, L.nready > 0)
          end
        end
      end
    end
    local z = {}
    for _, L in ipairs(heap) do
      if L.moved and L.e then z[#z + 1] = num(L.p); z[#z + 1] = L.name end
      L.moved = false
    end
    if z[1] then redis.call('ZADD', qkey(q, 'lanes'), unpack(z)) end
    if not refetch then break end
  end
  T.pa = plain_n > 0
end

for a = 7, #ARGV do
  if n >= limit then break end
  local q = ARGV[a]
  -- A paused queue is skipped (its due jobs are promoted by the maintenance sweep).
  if not is_paused(q) then
    promote_due(q, 1000)
    local lanes = qkey(q, 'lanes')
    -- No lane eligible (one EXISTS): exactly the plain claim.
    local has = redis.call('EXISTS', lanes, qkey(q, 'lanes_parked')) > 0
    if has and FL.unpark(q) >= 0 and redis.call('EXISTS', lanes) == 1 then
      turns(q)
    else
      -- All scores are 0, so ZPOPMIN pops in member (rank) order.
      take_popped(q, redis.call('ZPOPMIN', qkey(q, 'ready'), limit - n))
    end
  end
end
return out
