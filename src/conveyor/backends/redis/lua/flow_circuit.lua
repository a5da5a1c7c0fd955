-- The `FlowControl` capability: open (ARGV[6] 'open', for ARGV[7] seconds, '' = until
-- closed) or close ('closed') the circuit of lane ARGV[5] of queue ARGV[4]; a lane not
-- kept yet is made. Returns the state it was in. Closing wakes idle workers if the lane
-- can run.
local q, name = ARGV[4], ARGV[5]
local L = FL.get(q, name)
if L.new then L.ta, L.new = NOW, false end
FL.refill(L)
local old = L.st == '' and 'closed' or L.st
if ARGV[6] == 'open' then
  FL.open_for(L, tonumber(ARGV[7]))
else
  FL.close(L)
end
if FL.place(L) then wake(q, 1) end
return old
