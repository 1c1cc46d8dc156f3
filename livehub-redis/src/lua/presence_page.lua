-- One page of a presence scope's members, in lexical order of their session ids (16 hex
-- digits: numeric order too).
--
-- KEYS[1] members, KEYS[2] order (see presence_add.lua)
-- ARGV[1] the session id the page starts after ('' for the first page), ARGV[2] most members
-- Returns {1 if more follow else 0, the last session id read ('' if none), member JSON, ...}.
local n = tonumber(ARGV[2])
local min = '-'
if ARGV[1] ~= '' then min = '(' .. ARGV[1] end
local ids = redis.call('ZRANGEBYLEX', KEYS[2], min, '+', 'LIMIT', 0, n + 1)
local more = 0
if #ids > n then
  more = 1
  ids[#ids] = nil
end
local out = {more, ids[#ids] or ''}
if #ids > 0 then
  local values = redis.call('HMGET', KEYS[1], unpack(ids))
  for _, v in ipairs(values) do
    if v then out[#out + 1] = v end
  end
end
return out
