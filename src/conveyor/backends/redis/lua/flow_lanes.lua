-- The `FlowControl` capability's listing: ARGV[4..] queues. Returns per lane kept {queue,
-- name, ready, running, weight, concurrency, rate, burst, tokens, circuit, state, open
-- until ('' none), calls, failures}, each queue's by name. An idle lane (no job, a full
-- bucket, closed with nothing counted in a live window) is left out and left to expire.
local out = {}
for a = 4, #ARGV do
  local q = ARGV[a]
  local all = qkey(q, 'lanes_all')
  local names = redis.call('SMEMBERS', all)
  table.sort(names)
  for _, name in ipairs(names) do
    if redis.call('EXISTS', FL.key(q, name, 'lane')) == 0 then
      redis.call('SREM', all, name)  -- expired
    else
      local L = FL.get(q, name)
      FL.refill(L)
      local ready = redis.call('ZCARD', FL.key(q, name, 'lane_ready'))
      local running = FL.running(L)
      local counted = L.ws ~= nil and L.n > 0
      if counted and L.cs ~= '' then
        local _, window = FL.spec(L.cs)
        counted = NOW < L.ws + window
      end
      local full = L.r <= 0 or L.t >= L.b
      local idle = ready == 0 and running == 0 and full and L.st == '' and not counted
      if not idle then
        out[#out + 1] = {q, name, ready, running, L.w, L.c, num(L.r), L.b,
                         L.r > 0 and num(L.t) or '0', L.cs,
                         L.st == '' and 'closed' or L.st,
                         (L.st == 'open' and L.u) and num(L.u) or '', L.n, L.f}
      end
    end
  end
end
FL.cache = {}  -- a listing writes nothing
return out
