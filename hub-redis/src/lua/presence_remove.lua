-- Removes one member of a presence scope. Returns 1 if it was there (the caller emits its
-- leave), 0 if not (someone else removed or expired it first).
--
-- KEYS[1] members, KEYS[2] expiries (see presence_add.lua); ARGV[1] session
local n = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n
