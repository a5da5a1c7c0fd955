-- The `Rollups` capability: merge named sums into per-minute hashes, all in the prefix's slot
-- (a field per task and minute: small enough for one slot, and one call stays atomic on
-- Cluster). ARGV[4] keep_for (seconds); then per row: minute, "queue\ttask", n, and n
-- (name, amount) pairs. A field holds its (queue, task)'s sums as a JSON object, so an hour
-- of 20 tasks reads as 1,200 short fields. Each minute's hash keeps its expiry (NOW's time)
-- in the field "\texp", read by `rollup_read`; the key's own TTL (relative, so right on any
-- clock) only collects it. A row already past its retention is not written.
local keep = tonumber(ARGV[4])
local i = 5
while i <= #ARGV do
  local minute, group, n = tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2])
  local expires = minute + 60 + keep
  if expires > NOW then
    local key = slot('') .. ':rollup:' .. ARGV[i]
    local old = redis.call('HGET', key, group)
    local sums = old and cjson.decode(old) or {}
    for j = 0, n - 1 do
      local name, amount = ARGV[i + 3 + 2 * j], tonumber(ARGV[i + 4 + 2 * j])
      sums[name] = (sums[name] or 0) + amount
    end
    redis.call('HSET', key, group, cjson.encode(sums))
    local was = tonumber(redis.call('HGET', key, '\texp') or '0')
    if expires > was then
      redis.call('HSET', key, '\texp', num(expires))
      redis.call('PEXPIRE', key, math.max(1, math.floor((expires - NOW) * 1000)))
    end
  end
  i = i + 3 + 2 * n
end
return 1
