-- Adds or refreshes members of one presence scope, counting each new member under its user.
--
-- KEYS[1] members (hash: session -> member JSON)
-- KEYS[2] expiries (sorted set: session -> expiry, ms on the Redis clock)
-- KEYS[3] order (sorted set, every score 0: session ids, for pages in lexical order)
-- KEYS[4] users (hash: user key -> sessions of that user in the scope)
-- ARGV[1] ttl in ms, then pairs: session, member JSON
-- Returns, per member, 1 if it is its user's first session in the scope (the user joined),
-- else 0.
--
-- A member is counted under its user once, when it enters the order set (ZADD NX), and
-- uncounted when it leaves it (presence_remove, presence_expire): the order set says which
-- members are counted. The user key is `u:<user>`, or `s:<session>` for an anonymous member
-- (user ""), read from the member JSON the same way in every script.
local function user_key(s, json)
  local ok, m = pcall(cjson.decode, json)
  local u = ''
  if ok and type(m) == 'table' and type(m.user) == 'string' then u = m.user end
  if u == '' then return 's:' .. s end
  return 'u:' .. u
end
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV - 1, 2 do
  local s = ARGV[i]
  redis.call('HSET', KEYS[1], s, ARGV[i + 1])
  redis.call('ZADD', KEYS[2], expiry, s)
  local first = 0
  if redis.call('ZADD', KEYS[3], 'NX', 0, s) == 1 then
    if redis.call('HINCRBY', KEYS[4], user_key(s, ARGV[i + 1]), 1) == 1 then first = 1 end
  end
  out[#out + 1] = first
end
return out
