-- Adds or refreshes members of one presence scope.
--
-- KEYS[1] members (hash: session -> member JSON)
-- KEYS[2] expiries (sorted set: session -> expiry, ms on the Redis clock)
-- ARGV[1] ttl in ms, then pairs: session, member JSON
-- Returns the number of members written.
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV - 1, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], expiry, ARGV[i])
end
return math.floor((#ARGV - 1) / 2)
