-- ARGV[4..]: (queue, id, token) per lease. Returns 1 (given back) or 0 (stale) per lease.
local out = {}
for i = 4, #ARGV, 3 do
  out[#out + 1] = give_back(ARGV[i], ARGV[i + 1], ARGV[i + 2]) and 1 or 0
end
return out
