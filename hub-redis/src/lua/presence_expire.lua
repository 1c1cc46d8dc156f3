-- Removes the members of one presence scope whose expiry passed and returns them: one script,
-- so each expired member is returned to exactly one caller.
--
-- KEYS[1] members, KEYS[2] expiries (see presence_add.lua)
-- ARGV[1] most members to remove (0: none, only the next expiry)
-- Returns {next expiry in ms or '-1' if the scope is empty, member JSON, member JSON, ...}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {'-1'}
if ARGV[1] ~= '0' then
  local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, ARGV[1])
  for _, s in ipairs(due) do
    local m = redis.call('HGET', KEYS[1], s)
    if m then
      redis.call('HDEL', KEYS[1], s)
      out[#out + 1] = m
    end
    redis.call('ZREM', KEYS[2], s)
  end
end
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if #first > 0 then out[1] = first[2] end
return out
