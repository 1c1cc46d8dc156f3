-- Publishes one or more messages to a topic, atomically and in order: creates the topic's
-- epoch if it has none, takes the next offsets, appends to the bounded stream and publishes
-- each message on the topic's channel. The node sends the publishes of one topic that are
-- queued next to each other as one call: the topic's bookkeeping (epoch, offset, trim, ttl)
-- is then paid once for them all.
--
-- KEYS[1] meta (hash: e = epoch, o = last offset, f = first offset held in the stream,
--         t = payload bytes ever appended in this epoch)
-- KEYS[2] stream (entries `<offset>-<t before it>` with fields c = codec tag, d = data, and
--         for a keyed message k = key, x = '1' if it deletes its key). An entry's id carries
--         the bytes appended before it, so the bytes held from any entry on are `t` minus its
--         id's second part: trimming reads one entry, not every entry it drops.
-- ARGV[1] epoch candidate (random, from the node: a script cannot make randomness)
-- ARGV[2] messages kept             ARGV[3] payload bytes kept
-- ARGV[4] ttl in ms (0: none)       ARGV[5] the topic's channel
-- ARGV[6] for several messages, the body of their channel message after its count (the node
--         writes it: see below); '' for one
-- then four per message, from ARGV[7]: codec tag (one byte), data, key ('': none), and '1'
-- if the message deletes its key.
-- Returns {epoch, offset of the first message} (the others follow it, one by one).
local meta, stream = KEYS[1], KEYS[2]
local max_len = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local channel = ARGV[5]

local m = redis.call('HMGET', meta, 'e', 'o', 'f', 't', 'b')
local epoch = m[1]
local top, held_from, total = 0, 1, 0
if not epoch then
  -- A new epoch: what is left of an older stream under this name goes, offsets restart at 1.
  epoch = ARGV[1]
  -- HSET first: a script without flags is checked for OOM at its first write only, and
  -- DEL would pass that check.
  redis.call('HSET', meta, 'e', epoch, 'o', 0, 'f', 1, 't', 0)
  redis.call('DEL', stream)
else
  top = tonumber(m[2]) or 0
  -- A meta without `f` or `t` is older than them (it kept `b`, the bytes held): `f` is then
  -- read off the stream, and as its entries say 0 bytes before them, counting from what it
  -- holds over-counts (trims early, never late) until they are gone.
  held_from = tonumber(m[3]) or (top - redis.call('XLEN', stream) + 1)
  total = tonumber(m[4]) or tonumber(m[5]) or 0
end

-- An integer as Redis reads it: Lua prints numbers from 1e14 on as 1e+14.
local function int(n)
  if n < 1e14 then return n end
  return string.format('%d', n)
end

local count = math.floor((#ARGV - 6) / 4)
local first = top + 1
local last = top + count
-- The offsets are taken first (the first write, where Redis checks for OOM): should a later
-- step fail, they are used up, never handed out twice.
redis.call('HSET', meta, 'o', int(last))

-- The channel message, format 1 (`wire.rs` reads it). One message: version, kind, codec tag,
-- epoch length, epoch, offset (u64, big-endian), then for kind 3 (a keyed publication) the
-- key's length (u16, big-endian), the key and a delete flag byte, then the data; kind 1 is a
-- publication without a key. Several messages go as one channel message of kind 4: version,
-- kind, epoch length, epoch, the first offset (u64), the count (u16), then per message its
-- codec tag, flags (1: keyed, 2: deletes its key), for a keyed one the key's length (u16) and
-- the key, the data's length (u32) and the data (the node writes this part, ARGV[6]). All
-- big-endian.
local function be(n, width)
  local b = {}
  for i = width, 1, -1 do
    b[i] = n % 256
    n = math.floor(n / 256)
  end
  return string.char(unpack(b))
end
local epoch_head = string.char(#epoch) .. epoch

for i = 0, count - 1 do
  local at = 7 + 4 * i
  local codec, data, key, delete = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  if max_len > 0 then
    local id = int(first + i) .. '-' .. int(total)
    if key ~= '' then
      redis.call('XADD', stream, id, 'c', codec, 'd', data, 'k', key, 'x', delete)
    else
      redis.call('XADD', stream, id, 'c', codec, 'd', data)
    end
    total = total + #data
  end
end

if count > 1 then
  redis.call('PUBLISH', channel, '\1\4' .. epoch_head .. be(first, 8) .. be(count, 2) .. ARGV[6])
else
  local codec, data, key = ARGV[7], ARGV[8], ARGV[9]
  if key ~= '' then
    local flag = '\0'
    if ARGV[10] == '1' then flag = '\1' end
    redis.call('PUBLISH', channel, '\1\3' .. codec .. epoch_head .. be(first, 8) .. be(#key, 2)
      .. key .. flag .. data)
  else
    redis.call('PUBLISH', channel, '\1\1' .. codec .. epoch_head .. be(first, 8) .. data)
  end
end

local held = 0
if max_len > 0 then
  -- Keep the longest suffix within both bounds: the history stays contiguous. The stream
  -- holds offsets `held_from` to `last`; the count bound gives the first one kept.
  local keep = held_from
  if last - keep + 1 > max_len then keep = last - max_len + 1 end
  -- Then the byte bound: the first entry from `keep` on whose bytes-before is at least
  -- `total - max_bytes` (usually `keep` itself: one entry read).
  local from = int(keep)
  local want = 1
  while true do
    local batch = redis.call('XRANGE', stream, from, '+', 'COUNT', want)
    want = 16
    if #batch == 0 then
      keep = last + 1
      held = 0
      break
    end
    local found = false
    for _, entry in ipairs(batch) do
      local o, before = string.match(entry[1], '^(%d+)-(%d+)$')
      held = total - tonumber(before)
      if held <= max_bytes then
        keep = tonumber(o)
        found = true
        break
      end
    end
    if found then break end
    from = '(' .. batch[#batch][1]
  end
  if keep > held_from then
    redis.call('XTRIM', stream, 'MINID', int(keep) .. '-0')
  end
  held_from = keep
else
  redis.call('DEL', stream)
  held_from = last + 1
end
redis.call('HSET', meta, 'f', int(held_from), 't', int(total))

if ARGV[4] ~= '0' then
  redis.call('PEXPIRE', meta, ARGV[4])
  redis.call('PEXPIRE', stream, ARGV[4])
else
  redis.call('PERSIST', meta)
  redis.call('PERSIST', stream)
end

return {epoch, first}
