-- Reads a topic's history. A topic without a stream gets an empty one (a new epoch), so that
-- the reader has a position to resume from.
--
-- KEYS[1] meta, KEYS[2] stream (see publish.lua)
-- ARGV[1] epoch candidate     ARGV[2] ttl in ms (0: none)
-- ARGV[3] mode: 't' top only, 'a' after a position, 'l' the last n
-- ARGV[4] the position's epoch (mode 'a')
-- ARGV[5] first id to read, `<offset + 1>-0` (mode 'a'), or n (mode 'l')
-- Returns {epoch, top, id, codec, data, key, delete, ...} in ascending order (key '' when the
-- message has none; delete '1' or '0').
local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'e')
if not epoch then
  epoch = ARGV[1]
  -- HSET first: a script without flags is checked for OOM at its first write only, and
  -- DEL would pass that check.
  redis.call('HSET', meta, 'e', epoch, 'o', 0, 'f', 1, 'b', 0, 't', 0)
  redis.call('DEL', stream)
  if ARGV[2] ~= '0' then redis.call('PEXPIRE', meta, ARGV[2]) end
  return {epoch, 0}
end
local out = {epoch, tonumber(redis.call('HGET', meta, 'o')) or 0}
local entries = {}
if ARGV[3] == 'a' then
  if ARGV[4] == epoch then
    entries = redis.call('XRANGE', stream, ARGV[5], '+')
  end
elseif ARGV[3] == 'l' then
  local rev = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', ARGV[5])
  for i = #rev, 1, -1 do entries[#entries + 1] = rev[i] end
end
for _, e in ipairs(entries) do
  local f = {}
  for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
  out[#out + 1] = e[1]
  out[#out + 1] = f['c'] or ''
  out[#out + 1] = f['d'] or ''
  out[#out + 1] = f['k'] or ''
  out[#out + 1] = f['x'] or '0'
end
return out
