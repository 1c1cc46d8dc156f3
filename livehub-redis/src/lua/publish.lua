-- Publishes one message to a topic, atomically: creates the topic's epoch if it has none,
-- takes the next offset, appends to the bounded stream and publishes on the topic's channel.
--
-- KEYS[1] meta (hash: e = epoch, o = last offset, b = payload bytes held in the stream)
-- KEYS[2] stream (entries `<offset>-0` with fields c = codec tag, d = data)
-- ARGV[1] epoch candidate (random, from the node: a script cannot make randomness)
-- ARGV[2] codec tag (one byte)      ARGV[3] data
-- ARGV[4] messages kept             ARGV[5] payload bytes kept
-- ARGV[6] ttl in ms (0: none)       ARGV[7] the topic's channel
-- ARGV[8] the message's key ('' : none)   ARGV[9] '1' if the message deletes its key
-- Returns {epoch, offset}.
local meta, stream = KEYS[1], KEYS[2]
local codec, data = ARGV[2], ARGV[3]
local key = ARGV[8] or ''
local max_len = tonumber(ARGV[4])
local max_bytes = tonumber(ARGV[5])

local m = redis.call('HMGET', meta, 'e', 'b')
local epoch = m[1]
local bytes = 0
if not epoch then
  -- A new epoch: what is left of an older stream under this name goes, offsets restart at 1.
  epoch = ARGV[1]
  -- HSET first: a script without flags is checked for OOM at its first write only, and
  -- DEL would pass that check.
  redis.call('HSET', meta, 'e', epoch, 'o', 0, 'b', 0)
  redis.call('DEL', stream)
else
  bytes = tonumber(m[2]) or 0
end
local offset = redis.call('HINCRBY', meta, 'o', 1)

if max_len > 0 then
  if key ~= '' then
    redis.call('XADD', stream, offset .. '-0', 'c', codec, 'd', data, 'k', key, 'x', ARGV[9])
  else
    redis.call('XADD', stream, offset .. '-0', 'c', codec, 'd', data)
  end
  bytes = bytes + #data
  -- Oldest first, until both bounds hold: the history stays a contiguous suffix.
  local len = redis.call('XLEN', stream)
  local cut = nil
  local from = '-'
  while len > 0 and (len > max_len or bytes > max_bytes) do
    -- Read only what must go (usually one entry: the history is full and one came in); more
    -- in batches when the byte bound cuts deeper.
    local want = 1
    if len > max_len then want = len - max_len end
    if want > 64 then want = 64 end
    local batch = redis.call('XRANGE', stream, from, '+', 'COUNT', want)
    if #batch == 0 then break end
    for _, entry in ipairs(batch) do
      if len <= max_len and bytes <= max_bytes then break end
      local d = entry[2][4]
      if d then bytes = bytes - #d end
      len = len - 1
      cut = entry[1]
    end
    from = '(' .. cut
  end
  if cut then
    local n = tonumber(string.match(cut, '^(%d+)'))
    redis.call('XTRIM', stream, 'MINID', (n + 1) .. '-0')
  end
  if bytes < 0 then bytes = 0 end
  redis.call('HSET', meta, 'b', bytes)
else
  redis.call('DEL', stream)
end

if ARGV[6] ~= '0' then
  redis.call('PEXPIRE', meta, ARGV[6])
  redis.call('PEXPIRE', stream, ARGV[6])
else
  redis.call('PERSIST', meta)
  redis.call('PERSIST', stream)
end

-- The channel message, format 1: version, kind, codec tag, epoch length, epoch, offset (u64,
-- big-endian), then for kind 3 (a keyed publication) the key's length (u16, big-endian), the
-- key and a delete flag byte, then the data. Kind 1: a publication without a key.
local b = {}
local n = offset
for i = 8, 1, -1 do
  b[i] = n % 256
  n = math.floor(n / 256)
end
local head = codec .. string.char(#epoch) .. epoch .. string.char(unpack(b))
if key ~= '' then
  local flag = '\0'
  if ARGV[9] == '1' then flag = '\1' end
  redis.call('PUBLISH', ARGV[7], '\1\3' .. head
    .. string.char(math.floor(#key / 256), #key % 256) .. key .. flag .. data)
else
  redis.call('PUBLISH', ARGV[7], '\1\1' .. head .. data)
end
return {epoch, offset}
