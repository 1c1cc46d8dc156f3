-- Removes the members of one presence scope whose expiry passed and returns them: one script,
-- so each expired member is returned to exactly one caller.
--
-- KEYS[1] members, KEYS[2] expiries, KEYS[3] order, KEYS[4] users (see presence_add.lua)
-- ARGV[1] most members to remove (0: none, only the next expiry)
-- Returns {next expiry in ms or '-1' if the scope is empty, then per member: member JSON,
-- 1 if it was its user's last session in the scope (the user left) else 0}.
local function user_key(s, json)
  local ok, m = pcall(cjson.decode, json)
  local u = ''
  if ok and type(m) == 'table' and type(m.user) == 'string' then u = m.user end
  if u == '' then return 's:' .. s end
  return 'u:' .. u
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {'-1'}
if ARGV[1] ~= '0' then
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, ARGV[1])
  for _, s in ipairs(due) do
    local m = redis.call('HGET', KEYS[1], s)
    local counted = redis.call('ZREM', KEYS[3], s)
    if m then
      redis.call('HDEL', KEYS[1], s)
      local last = 0
      if counted == 1 then
        local u = user_key(s, m)
        if redis.call('HINCRBY', KEYS[4], u, -1) <= 0 then
          redis.call('HDEL', KEYS[4], u)
          last = 1
        end
      end
      out[#out + 1] = m
      out[#out + 1] = last
    end
    redis.call('ZREM', KEYS[2], s)
  end
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first > 0 then out[1] = first[2] end
return out
