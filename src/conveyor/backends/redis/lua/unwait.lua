-- ARGV[4] worker. Ends its registration and puts back the leases handed to it that it will
-- not run (it stopped waiting): queued again, their attempt not counted. Returns how many.
if CLUSTER then return 0 end
local worker = ARGV[4]
unregister(worker)
local n = 0
for _, entry in ipairs(redis.call('LPOP', inbox_key(worker), 1000) or {}) do
  -- The id and token are the entry's first fields: <len>:<token><len>:<expires><len>:<id>
  local pos, fields = 1, {}
  for i = 1, 3 do
    local colon = string.find(entry, ':', pos, true)
    local len = tonumber(string.sub(entry, pos, colon - 1))
    fields[i] = string.sub(entry, colon + 1, colon + len)
    pos = colon + len + 1
  end
  local token, id = fields[1], fields[3]
  local q = redis.call('HGET', jkey('', id), 'queue')
  if q and give_back(q, id, token) then n = n + 1 end
end
return n
