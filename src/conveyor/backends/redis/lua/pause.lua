-- The `QueueControl` capability: pause (ARGV[4] '1') or resume ('0') queue ARGV[5].
-- The flag lives in the queue's slot (`q:<queue>:paused`), where `claim`, `wait` and the
-- handoff read it; on a single Redis the registry `{prefix}:paused` (for listing) is
-- updated here too, in cluster mode by the caller (another slot). Returns 1 if the queue
-- changed state (it was running / it was paused), else 0. A resume wakes idle workers.
local q = ARGV[5]
local flag = qkey(q, 'paused')
local changed
if ARGV[4] == '1' then
  changed = redis.call('SET', flag, NOW_S, 'NX') and 1 or 0
  if not CLUSTER then redis.call('SADD', slot('') .. ':paused', q) end
else
  changed = redis.call('DEL', flag)
  if not CLUSTER then redis.call('SREM', slot('') .. ':paused', q) end
  if changed == 1 then wake(q, math.max(1, redis.call('ZCARD', qkey(q, 'ready')))) end
end
return changed
