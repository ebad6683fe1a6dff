-- Reads stream entries for the consumer group within a memory budget: Redis
-- weighs each entry before it is delivered, so that a reply never brings
-- more than the caller reserved. Runs atomically, so the entries weighed are
-- the entries delivered. See src/weighed_read.rs.
--
-- KEYS[1] stream
-- ARGV[1] mode: "new" (never delivered, like ">"), "pending" (this
--         consumer's own pending entries after ARGV[12]), "claim" (any
--         consumer's entries idle for ARGV[13] ms, from ARGV[12] on) or
--         "held" (the ids ARGV[14..], pending to this consumer: reloaded
--         without counting a delivery)
-- ARGV[2] group, ARGV[3] consumer, ARGV[4] most entries
-- ARGV[5] weight limit, ARGV[6] "1" to take the first entry whatever it weighs
-- ARGV[7] raw factor, ARGV[8] expanded factor, ARGV[9] max expanded bytes
-- ARGV[10] whole budget, ARGV[11] max deliveries
-- ARGV[12] cursor, ARGV[13] min idle ms
--
-- Reply: {status, weight, next, ids, counts, deleted, unloaded}
--   status "ok", "need" (the first entry alone weighs `weight`, more than the
--   limit) or "empty" (nothing to read; next = the group's last delivered id)
--   ids: the entries delivered (the caller fetches their fields with XRANGE:
--   returning bulk data through Lua is several times slower than XRANGE)
--   counts: deliveries including this one
--   deleted: pending ids whose entries are gone (acked here)
--   unloaded: {id, raw bytes} of entries past the delivery limit and heavier
--   than the whole budget, not to be loaded (they are in ids too)

local stream = KEYS[1]
local mode, group, consumer = ARGV[1], ARGV[2], ARGV[3]
local max_count = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local force_one = ARGV[6] == '1'
local raw_factor, expanded_factor = tonumber(ARGV[7]), tonumber(ARGV[8])
local max_expanded = tonumber(ARGV[9])
local whole = tonumber(ARGV[10])
local max_deliveries = tonumber(ARGV[11])
local cursor = ARGV[12]
local min_idle = ARGV[13]

-- expanded_size: begin (tests/it/crafted_payloads.rs runs this block alone and
-- compares it with its Rust mirror, weighed_read::find_weighed_data)
local B64 = {}
for i = 1, 64 do
  B64[string.byte('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/', i)] = i - 1
end
B64[string.byte('-')] = 62
B64[string.byte('_')] = 63

-- The size compressed data expands to, as the SDK writes it:
-- {"_compressed": true, "_data": "<base64 of one gzip member>"}. The first
-- "_data" key followed by a string, wherever it is (a plain find runs at C
-- speed; Lua's pattern matcher would cost tens of microseconds), whose text
-- starts as gzip does ("H4sI": 1f 8b 08) weighs what gzip's trailer declares
-- (ISIZE, its last four bytes, little-endian). Anything else weighs as no
-- expansion: the parser inflates only gzip, only the text weighed here, one
-- member, and never past the size read here (src/event/payload.rs), so
-- that what it holds is never more than what was weighed.
local function expanded_size(data)
  local init = 1
  local open
  while true do
    local at, key_end = string.find(data, '"_data"', init, true)
    if not at then return 0 end
    local _, quote = string.find(data, '^%s*:%s*"', key_end + 1)
    if quote then open = quote; break end
    init = at + 1
  end
  local close = string.find(data, '"', open + 1, true)
  if not close then return 0 end
  if string.sub(data, open + 1, open + 4) ~= 'H4sI' then return 0 end
  local len = close - open - 1
  if len < 8 or len % 4 ~= 0 then return 0 end
  local bytes = {}
  for quad = 0, 1 do
    local n, pad = 0, 0
    for i = 1, 4 do
      local c = string.byte(data, close - 8 + quad * 4 + i - 1)
      local v = B64[c]
      if c == 61 then v = 0; pad = pad + 1 end
      if v == nil then return 0 end
      n = n * 64 + v
    end
    table.insert(bytes, math.floor(n / 65536) % 256)
    if pad < 2 then table.insert(bytes, math.floor(n / 256) % 256) end
    if pad < 1 then table.insert(bytes, n % 256) end
  end
  local k = #bytes
  if k < 4 then return 0 end
  local size = bytes[k - 3] + bytes[k - 2] * 256 + bytes[k - 1] * 65536 + bytes[k] * 16777216
  return math.min(size, max_expanded)
end
-- expanded_size: end

local function raw_size(fields)
  local raw = 0
  for i = 1, #fields do raw = raw + #fields[i] end
  return raw
end

local function weigh(fields)
  local expanded = 0
  for i = 1, #fields, 2 do
    if fields[i] == 'data' and fields[i + 1] then expanded = expanded_size(fields[i + 1]) end
  end
  return raw_factor * raw_size(fields) + expanded_factor * expanded
end

-- Picks entries in order while they fit: returns whether to go on, and the
-- weight of the first entry when it alone does not fit.
local picked, total = {}, 0
local function fits(w)
  if total + w <= limit or (#picked == 0 and force_one) then return true end
  return false
end

if mode == 'new' then
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
  local last = nil
  if ok then
    for _, g in ipairs(groups) do
      local name, delivered = nil, nil
      for i = 1, #g, 2 do
        if g[i] == 'name' then name = g[i + 1] end
        if g[i] == 'last-delivered-id' then delivered = g[i + 1] end
      end
      if name == group then last = delivered end
    end
  end
  if not last then return redis.error_reply('NOGROUP No such key or consumer group') end
  local start = '(' .. last
  -- Entries are copied into the script to be weighed: one at a time while
  -- they are big, more at once (up to 32) while they are small.
  local chunk, full = 1, false
  while #picked < max_count and not full do
    local rows = redis.call('XRANGE', stream, start, '+', 'COUNT', math.min(chunk, max_count - #picked))
    if #rows == 0 then break end
    for _, row in ipairs(rows) do
      local w = weigh(row[2])
      if not fits(w) then
        if #picked == 0 then return {'need', w, last, {}, {}, {}, {}} end
        full = true
        break
      end
      total = total + w
      table.insert(picked, row[1])
      start = '(' .. row[1]
      if w > 262144 then chunk = 1 else chunk = math.min(chunk * 2, 32) end
    end
  end
  if #picked == 0 then return {'empty', 0, last, {}, {}, {}, {}} end
  -- Delivered by Redis's own consumer-group logic, which keeps the group's
  -- books (pending entries, last-delivered-id, entries-read and so lag)
  -- whatever was trimmed or deleted before: the next #picked entries after
  -- the group's last delivered id, the very ones weighed (the script runs
  -- atomically). Setting entries-read here instead (XGROUP SETID ...
  -- ENTRIESREAD) left lag wrong for good after a trim or an XDEL (issue 17).
  -- The reply is dropped; the caller fetches the fields with XRANGE
  -- (returning bulk data through Lua is several times slower).
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', #picked, 'STREAMS', stream, '>')
  local delivered = reply and reply[1] and reply[1][2] or {}
  local ids, counts = {}, {}
  for i, row in ipairs(delivered) do ids[i] = row[1]; counts[i] = 1 end
  reply, delivered = nil, nil
  if #ids ~= #picked or ids[#ids] ~= picked[#picked] then
    return redis.error_reply('ERR weighed read: XREADGROUP delivered other entries than the ones weighed')
  end
  return {'ok', total, last, ids, counts, {}, {}}
end

-- The other modes start from pending rows {id, consumer, idle, deliveries}.
local rows
if mode == 'pending' then
  rows = redis.call('XPENDING', stream, group, '(' .. cursor, '+', max_count, consumer)
elseif mode == 'claim' then
  rows = redis.call('XPENDING', stream, group, 'IDLE', min_idle, cursor, '+', max_count)
else
  rows = {}
  for i = 14, #ARGV do
    local row = redis.call('XPENDING', stream, group, ARGV[i], ARGV[i], 1, consumer)
    if row[1] then table.insert(rows, row[1]) end
  end
end

if mode == 'held' then
  -- Keeps the whole held batch idle-fresh, so that other replicas do not
  -- claim it, whatever part of it fits this time.
  for _, row in ipairs(rows) do redis.call('XCLAIM', stream, group, consumer, 0, row[1], 'JUSTID') end
end

local entries, counts, deleted, unloaded, next_id = {}, {}, {}, {}, '0-0'
for _, row in ipairs(rows) do
  local id, deliveries = row[1], row[4]
  -- This read is a delivery, except a reload of a held batch.
  if mode ~= 'held' then deliveries = deliveries + 1 end
  local found = redis.call('XRANGE', stream, id, id)
  if #found == 0 then
    redis.call('XACK', stream, group, id)
    table.insert(deleted, id)
    next_id = id
  else
    local fields = found[1][2]
    local w = weigh(fields)
    local skip = deliveries > max_deliveries and w > whole
    if skip then
      -- Past the delivery limit and too heavy to hold: it is dead-lettered
      -- without being loaded (it may be what kills the process).
      w = 0
    end
    if not fits(w) then
      if #picked == 0 then return {'need', w, next_id, {}, {}, deleted, {}} end
      break
    end
    if skip then table.insert(unloaded, {id, raw_size(fields)}) end
    total = total + w
    table.insert(picked, id)
    table.insert(entries, id)
    table.insert(counts, deliveries)
    next_id = id
    if mode ~= 'held' then
      redis.call('XCLAIM', stream, group, consumer, 0, id, 'RETRYCOUNT', deliveries, 'JUSTID')
    end
  end
end
if mode == 'claim' then
  -- The next page starts after the last row taken; done when the page was short.
  if #rows < max_count and #entries + #deleted == #rows then
    next_id = '0-0'
  else
    next_id = '(' .. next_id
  end
end
if #rows == 0 then return {'empty', 0, next_id, {}, {}, {}, {}} end
return {'ok', total, next_id, entries, counts, deleted, unloaded}
