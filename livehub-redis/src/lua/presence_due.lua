-- The presence scopes that may hold expired members: those whose next expiry (the index's
-- score, a lower bound) has passed on the Redis clock.
--
-- KEYS[1] the presence index (sorted set: scope id -> next expiry in ms)
-- ARGV[1] most scopes to return
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[1])
