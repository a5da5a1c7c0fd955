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
for a = 7, #ARGV do
  if n >= limit then break end
  local q = ARGV[a]
  -- A paused queue is skipped (its due jobs are promoted by the maintenance sweep).
  local popped = {}
  if not is_paused(q) then
    promote_due(q, 1000)
    -- All scores are 0, so ZPOPMIN pops in member (rank) order.
    popped = redis.call('ZPOPMIN', qkey(q, 'ready'), limit - n)
  end
  for p = 1, #popped, 2 do
    local id = string.sub(popped[p], RANK_WIDTH + 1)
    -- The reply's fields plus seq and token, in one read; patched to what is written.
    local h = redis.call('HMGET', jkey(q, id), unpack(F_CLAIM))
    local token = lease_job(q, id, h, worker, expires, expires_s)
    if token then
      out[#out + 1] = token
      out[#out + 1] = h
      n = n + 1
    end
  end
end
return out
