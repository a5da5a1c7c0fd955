-- ARGV[4] queue ('' on a single Redis: read from the child's hash, whose key doesn't
-- depend on it there), [5] child id, [6] holds to add (negative: given back), [7..] parents
-- (each once, none the child; in the child's slot). Returns 1 (applied), 0 (the child is not
-- waiting: nothing changed), or {parent} and nothing changed when a parent is not stored
-- (purged since the caller's check). See `Backend.link`: new parents are appended to the
-- child's; live ones get an edge and count in `waiting_for`; ended ones count at once (a
-- failed or cancelled one, policy "cancel", cancels the child, and `run` cascades); then
-- the holds, and at 0 the child is released.
local q, id, holds = ARGV[4], ARGV[5], tonumber(ARGV[6]) or 0
local jk = jkey(q, id)
local h = redis.call('HMGET', jk, 'state', 'waiting_for', 'parents', 'on_parent_failure',
                     'run_at', 'seq', 'children', 'queue')
if h[1] ~= 'waiting' then return 0 end
if q == '' then q = h[8] or q end
local parents, have = {}, {}
if ARGV[7] then  -- (holds alone don't read the child's parents)
  for p in string.gmatch(h[3] or '', '[^,]+') do
    parents[#parents + 1] = p
    have[p] = true
  end
end
local known = #parents
-- First pass, before anything is written: every parent is stored; the new ones' states.
local live, reason = {}, nil
for i = 7, #ARGV do
  local p = ARGV[i]
  local ph = redis.call('HMGET', jkey(q, p), 'state', 'queue')
  local st = ph[1]
  if not st then return {p} end
  if not have[p] then
    have[p] = true
    parents[#parents + 1] = p
    if st == 'completed' or st == 'failed' or st == 'cancelled' then
      if st ~= 'completed' and h[4] ~= 'run' and not reason then
        reason = 'parent ' .. p .. ' ' .. st
      end
    else
      live[#live + 1] = {ph[2] or q, p}
    end
  end
end
if #parents > known then redis.call('HSET', jk, 'parents', table.concat(parents, ',')) end
if reason then
  redis.call('HSET', jk, 'cancel_reason', reason)
  finish(q, jk, id, h[6], 'waiting', 'cancelled', nil, nil, h[7])
  release_key(q, jk, id)
  return 1
end
local member = q .. '|' .. id
for _, p in ipairs(live) do
  redis.call('SADD', children_key(p[1], p[2]), member)
  redis.call('HSET', jkey(p[1], p[2]), 'children', 1)
end
local left = math.max(0, (tonumber(h[2]) or 0) + #live + holds)
if left > 0 then
  redis.call('HSET', jk, 'waiting_for', left)
elseif unblock(q, jk, id, h[5], h[6]) and not is_paused(q) then
  wake(q, 1)  -- a paused queue wakes nobody
end
return 1
