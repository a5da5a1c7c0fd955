-- ARGV[4] worker ('' = don't register), [5] lease_for, [6] seconds to stay registered,
-- [7..] queues. Returns "inbox" if a lease was handed to the worker already, "0" if work is
-- ready now; else registers the worker as a waiter (see `handoff`), clears stale wake-up
-- tokens and returns the seconds until the next scheduled job (or false if none).
local worker = CLUSTER and '' or ARGV[4]
if worker ~= '' and redis.call('LLEN', inbox_key(worker)) > 0 then return 'inbox' end
local best = nil
for a = 7, #ARGV do
  local q = ARGV[a]
  if not is_paused(q) then  -- a paused queue's work is ready for nobody
    if redis.call('ZCARD', qkey(q, 'ready')) > 0 then return '0' end
    -- Lanes: one eligible is work; a parked one's timer (next token, end of cooldown) is
    -- a due time like a scheduled job's.
    if redis.call('EXISTS', qkey(q, 'lanes')) == 1 then return '0' end
    for _, key in ipairs({'scheduled', 'lanes_parked'}) do
      local s = redis.call('ZRANGE', qkey(q, key), 0, 0, 'WITHSCORES')
      if s[2] then
        local d = tonumber(s[2]) - NOW
        if not best or d < best then best = d end
      end
    end
  end
end
if best and best <= 0 then return '0' end
-- Nothing is ready, so every token still in the wake lists is stale.
for a = 7, #ARGV do redis.call('DEL', qkey(ARGV[a], 'wake')) end
local stay = tonumber(ARGV[6]) or 0
if worker ~= '' and stay > 0 then
  unregister(worker)
  local qs = {}
  for a = 7, #ARGV do
    redis.call('ZADD', qkey(ARGV[a], 'waiters'), NOW + stay, worker)
    qs[#qs + 1] = ARGV[a]
  end
  redis.call('HSET', waiting_key(worker), 'queues', table.concat(qs, ','), 'lease_for', ARGV[5])
  redis.call('PEXPIRE', waiting_key(worker), math.ceil(stay * 1000) + 1000)
end
if best then return num(best) end
return false
