-- Removes one member of a presence scope. Returns 0 if it was not there (someone else
-- removed or expired it first), 1 if it was, 2 if it was, and was its user's last session in
-- the scope (the user left).
--
-- KEYS[1] members, KEYS[2] expiries, KEYS[3] order, KEYS[4] users (see presence_add.lua);
-- ARGV[1] session
local function user_key(s, json)
  local ok, m = pcall(cjson.decode, json)
  local u = ''
  if ok and type(m) == 'table' and type(m.user) == 'string' then u = m.user end
  if u == '' then return 's:' .. s end
  return 'u:' .. u
end
local s = ARGV[1]
local json = redis.call('HGET', KEYS[1], s)
redis.call('ZREM', KEYS[2], s)
local counted = redis.call('ZREM', KEYS[3], s)
if not json then return 0 end
redis.call('HDEL', KEYS[1], s)
if counted == 1 then
  local u = user_key(s, json)
  if redis.call('HINCRBY', KEYS[4], u, -1) <= 0 then
    redis.call('HDEL', KEYS[4], u)
    return 2
  end
end
return 1
