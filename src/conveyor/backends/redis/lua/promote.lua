-- ARGV[4] max per queue, [5..] queues. Returns how many moved.
local n = 0
for a = 5, #ARGV do
  local moved = promote_due(ARGV[a], tonumber(ARGV[4]))
  wake(ARGV[a], moved)
  n = n + moved
end
return n
