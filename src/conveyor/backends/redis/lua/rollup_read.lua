-- The `Rollups` capability: the live per-minute hashes of minutes ARGV[4] <= m < ARGV[5]
-- (ARGV[4] a multiple of 60), as a flat list {minute, field, sums, ...} (field
-- "queue\ttask", sums a JSON object); ARGV[6] a queue to keep ("" for all).
local first, last, queue = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local want = queue .. '\t'
local out = {}
local m = first
while m < last do
  local key = slot('') .. ':rollup:' .. string.format('%d', m)
  local exp = tonumber(redis.call('HGET', key, '\texp') or '0')
  if exp > NOW then
    local all = redis.call('HGETALL', key)
    for k = 1, #all, 2 do
      local field = all[k]
      if field ~= '\texp' and (queue == '' or string.sub(field, 1, #want) == want) then
        out[#out + 1] = m
        out[#out + 1] = field
        out[#out + 1] = all[k + 1]
      end
    end
  end
  m = m + 60
end
return out
