-- The idempotency window of a player, shared by the scripts that judge and record requests
-- (loaded in front of them). docs/design/idempotency-window.md has the argument.
-- Per client, the player's meta hash holds
--   c:<client>            '<floor> <last write ms> <count>' then ' <request>:<applied ms>' for
--                         the oldest remembered request (the head) and for each request
--                         remembered since the window last forgot (the tail); count is every
--                         remembered request, q's included; floor '-' when nothing was
--                         forgotten, else the largest request id forgotten
--   q:<client>            the remembered requests between the head and the tail, oldest
--                         first, each ' <request>:<applied ms>' (absent when none)
--   r:<client>:<request>  the request's fingerprint (40 hex digits), then its stored reply
-- and the clients zset lists the clients with a window, scored by last write ms. So the
-- remembered requests are, oldest first: c's first entry, q's entries, c's other entries.
-- Every write reads and rewrites c, whose tail holds at most a quarter of the window once
-- the window has forgotten; q, as long as the window, is read and rewritten only when the
-- window forgets: Redis's Lua hashes every byte of every string it makes, so a long string
-- handled on every write costs more than the rest of the window. A c of the earlier
-- layout (the whole queue, no q) reads as a head and a long tail.

-- Request ids are u64 in decimal; Lua numbers are doubles, exact only below 2^53, so ids are
-- compared by length, then as two exact halves.
local function id_at_most(a, b)
  if #a ~= #b then return #a < #b end
  local cut = #a - 10
  if cut > 0 then
    local high_a, high_b = tonumber(string.sub(a, 1, cut)), tonumber(string.sub(b, 1, cut))
    if high_a ~= high_b then return high_a < high_b end
    return tonumber(string.sub(a, cut + 1)) <= tonumber(string.sub(b, cut + 1))
  end
  return tonumber(a) <= tonumber(b)
end

-- Forgets up to two clients without a write for client_ttl ms (their score is when they were
-- added or last found alive; their state says when they last wrote), re-scoring those found
-- alive.
local function forget_stale_clients(meta, clients, client_ttl, now)
  local stale = redis.call('ZRANGEBYSCORE', clients, '-inf', '(' .. (now - client_ttl),
    'LIMIT', 0, 2)
  for _, other in ipairs(stale) do
    local states = redis.call('HMGET', meta, 'c:' .. other, 'q:' .. other)
    local other_state = states[1]
    local last = other_state and tonumber(string.match(other_state, '^%S+ (%d+)'))
    if last and last >= now - client_ttl then
      redis.call('ZADD', clients, 'XX', last, other)
    else
      local fields = { 'c:' .. other, 'q:' .. other }
      for _, part in ipairs({ other_state or '', states[2] or '' }) do
        for id in string.gmatch(part, ' (%d+):%d+') do
          fields[#fields + 1] = 'r:' .. other .. ':' .. id
        end
      end
      redis.call('HDEL', meta, unpack(fields))
      redis.call('ZREM', clients, other)
    end
  end
end

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Judges a request of `client` before anything runs, given its window state and stored
-- record (both nil when absent); new_player when the player was never written (version 0:
-- it has no clients, and no record of any layout). Returns nil for a new request, or one of
--   'CLIENTS_FULL'            the client is new and the player keeps max_clients windows
--   'REQUEST_TOO_OLD'         not remembered, and at or below the client's floor
--   'REPLAY', stored          remembered: the stored record (fingerprint, then reply)
local function judge_request(meta, clients, client_ttl, max_clients, request, window_state,
    stored, new_player)
  -- A client new to this player takes a window only while the player has room for one
  -- (a player never written has no window at all). Forgetting stale clients first is
  -- housekeeping, not part of this request.
  if not window_state and not new_player and redis.call('ZCARD', clients) >= max_clients then
    forget_stale_clients(meta, clients, client_ttl, server_now())
    if redis.call('ZCARD', clients) >= max_clients then
      return 'CLIENTS_FULL'
    end
  end
  if stored then return 'REPLAY', stored end
  if window_state then
    local floor = string.sub(window_state, 1, string.find(window_state, ' ', 1, true) - 1)
    if floor ~= '-' and id_at_most(request, floor) then
      return 'REQUEST_TOO_OLD'
    end
  end
  return nil
end

-- Answers a multi-player transaction's key found remembered on its primary (`stored`, the
-- record of `record_field`): every participant's stored reply, { 'REPLAY', version, 1, 0,
-- reply... }, or IDEMPOTENCY_MISMATCH for another fingerprint. The record is written again as
-- it is, either way, so a WAIT after the call covers it (it may have gone out on another
-- connection): both answers are final.
local function replay_multi(meta, record_field, stored, fingerprint, version)
  redis.call('HSET', meta, record_field, stored)
  if string.sub(stored, 1, 40) ~= fingerprint then
    return { 'IDEMPOTENCY_MISMATCH', version, 0, 0 }
  end
  local reply = { 'REPLAY', version, 1, 0 }
  for _, packed in ipairs(cmsgpack.unpack(string.sub(stored, 41))) do
    reply[#reply + 1] = cmsgpack.unpack(packed)
  end
  return reply
end

-- The entry of `queue` starting at `at_space` (its ' '): id, applied ms (text), and where
-- the next starts.
local function window_entry(queue, at_space)
  local colon = string.find(queue, ':', at_space, true)
  local next_entry = string.find(queue, ' ', colon, true)
  local at = string.sub(queue, colon + 1, (next_entry or 0) - 1)
  return string.sub(queue, at_space + 1, colon - 1), at, next_entry
end

-- Whether an applied time (text) is older than `cutoff` (also given as text): millisecond
-- times of one length compare as text, without a strtod of 13 digits on every write. Both
-- are whole, non-negative numbers of ms below 1e14 (TIME, minus a window age of whole ms),
-- which '%d' writes exactly and Lua's '%.14g' wrote the same.
local function applied_before(at, cutoff, cutoff_text)
  if #at == #cutoff_text then return at < cutoff_text end
  return tonumber(at) < cutoff
end

-- Remembers an applied request of `client`: appends it to the tail, and forgets the oldest
-- together once the window holds a quarter more than its length or its head is older than
-- its age, down to the length and the age; the floor rises to the largest id forgotten.
-- Forgetting in batches keeps most writes to one HSET of the short c; only then is q read,
-- the kept entries split into the new head (c) and the new middle (q). Returns the meta
-- fields to set (the record, the client's state, and q when it changed), for the caller's
-- own HSET of meta. The long queue is cut with plain finds at positions, never into a
-- substring per entry.
local function remember_request(meta, client, request, window_state, window_ms,
    window_length, now, record)
  local floor, count, tail = '-', 0, ''
  if window_state then
    local after_floor = string.find(window_state, ' ', 1, true)
    local after_last = string.find(window_state, ' ', after_floor + 1, true)
    local after_count = string.find(window_state, ' ', after_last + 1, true)
    floor = string.sub(window_state, 1, after_floor - 1)
    if after_count then
      count = tonumber(string.sub(window_state, after_last + 1, after_count - 1))
      tail = string.sub(window_state, after_count)
    end
  end
  -- Numbers become text with '%d': Lua's own conversion ('..' on a number) formats a double
  -- with '%.14g', several times the work, on every write.
  local now_text = string.format('%d', now)
  local added = ' ' .. request .. ':' .. now_text
  count = count + 1
  local cutoff = now - window_ms
  local cutoff_text = string.format('%d', cutoff)
  -- The head's applied time: the first entry kept in c, or the one added now.
  local head_at = now_text
  if tail ~= '' then
    local _, at = window_entry(tail, 1)
    head_at = at
  end
  local fields = { 'r:' .. client .. ':' .. request, record }
  local entries
  if count > window_length + math.floor(window_length / 4)
      or applied_before(head_at, cutoff, cutoff_text) then
    -- The whole queue, oldest first: the head, the middle (q), the tail.
    entries = tail .. added
    local _, _, after_head = window_entry(entries, 1)
    local middle = redis.call('HGET', meta, 'q:' .. client) or ''
    local queue = middle .. entries
    if after_head then
      queue = string.sub(entries, 1, after_head - 1) .. middle .. string.sub(entries, after_head)
    end
    local forgotten = {}
    local at_space = 1
    while count > 1 do
      local id, at, next_entry = window_entry(queue, at_space)
      if count <= window_length and not applied_before(at, cutoff, cutoff_text) then break end
      forgotten[#forgotten + 1] = 'r:' .. client .. ':' .. id
      if floor == '-' or not id_at_most(id, floor) then floor = id end
      at_space, count = next_entry, count - 1
    end
    -- What is kept: its first entry is the new head (c), the rest the new middle (q).
    local _, _, after_new_head = window_entry(queue, at_space)
    if after_new_head then
      entries = string.sub(queue, at_space, after_new_head - 1)
      fields[#fields + 1] = 'q:' .. client
      fields[#fields + 1] = string.sub(queue, after_new_head)
    else
      entries = string.sub(queue, at_space)
      if middle ~= '' then forgotten[#forgotten + 1] = 'q:' .. client end
    end
    if #forgotten > 0 then redis.call('HDEL', meta, unpack(forgotten)) end
    fields[#fields + 1] = 'c:' .. client
    fields[#fields + 1] = floor .. ' ' .. now_text .. ' ' .. string.format('%d', count) .. entries
  else
    -- Nothing forgotten: c grows by the entry added, in one concatenation.
    fields[#fields + 1] = 'c:' .. client
    fields[#fields + 1] = floor .. ' ' .. now_text .. ' ' .. string.format('%d', count) .. tail
      .. added
  end
  return fields
end
