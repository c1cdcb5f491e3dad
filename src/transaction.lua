-- Colony's transaction script: applies one player's operations all-or-nothing.
--
-- KEYS[1] {id}:meta   hash: v = version, t = last-active ms, a = archived at version,
--                      p = 1 when an archived player's public part is back, b and n = bytes
--                      (names and values) and number of the player's entries, kept by every
--                      write (absent: counted afresh by the next write); x and y = the
--                      multi-player intent held and the last applied (apply.lua), w = until
--                      when a write on its own waits (see WRITER_WAITING), m = a slot
--                      move's tombstone (the player is parked: every script refuses it with
--                      the error MOVING, nothing applied); and the idempotency windows (see
--                      "The idempotency window" below)
-- KEYS[2] {id}:pub    hash: public entries, f:<name> = bytes field, c:<name> = counter
-- KEYS[3] {id}:priv   hash: private entries, same encoding
-- KEYS[4] colony:{<slot tag>}:active  zset of the slot's player ids by last-active ms
-- KEYS[5] colony:{<slot tag>}:dirty   set of the slot's players changed since their last
--                      checkpoint
-- KEYS[6] {id}:clients  zset: clients with a window, scored by last write ms
-- KEYS[7] {id}:idem:<client>:<request>, a legacy record (read only), or KEYS[1] again when
--                      there is no idempotency key
-- KEYS[8] {id}:intent  hash: the intent of a multi-player transaction the player holds
--                      (meta field x names its attempt); see "Prepare" below
-- KEYS[9] colony:{<slot tag>}:intents  zset of the slot's players holding an intent, by
--                      lease expiry
-- KEYS[10..11], a trade's commit only (see "Commit"): {primary}:decision:<attempt> and
--                      colony:{<slot tag>}:decisions
--
-- ARGV[1] player id
-- ARGV[2] access: 'o' owner, 'p' public
-- ARGV[3] client id, '' when the transaction has no idempotency key
-- ARGV[4] request id, decimal without leading zeros ('' without a key)
-- ARGV[5] fingerprint: 40 hex digits of SHA-1 over the player, access and operation
--         arguments, each length-prefixed ('' without a key); the caller computes it
-- ARGV[6] window age in ms: remembered requests older than this are forgotten
-- ARGV[7] window length: requests remembered per client at least (at most a quarter more
--         before the oldest are forgotten together)
-- ARGV[8] client TTL in ms: a client without a write for this long is forgotten
-- ARGV[9] read budget: most bytes the reads may return (names, values, 16 per entry)
-- ARGV[10] most bytes of the player's entries (names and values) a write may leave
-- ARGV[11] most entries a write may leave
-- ARGV[12] '1' when writes are recorded in KEYS[5] for the archiver's checkpoints, '0' when
--          checkpoints are off (then nothing reads the set)
-- ARGV[13] most clients a player keeps windows for: a new client past it is refused with
--          TOO_LARGE (after forgetting stale clients), so client ids cannot grow a player
-- ARGV[14] '' for a transaction on its own; else the attempt id of a multi-player
--          transaction
-- ARGV[15] in a trade: 'P' prepare a participant other than the primary (see "Prepare"),
--          'C' commit on the primary (see "Commit")
-- ARGV[16] prepare: the primary participant's player id; commit: the participants, each
--          '<length>:<player id>'
-- ARGV[17] prepare: the intent's lease in ms; commit: its deadline, ms since the Unix epoch
--          by the coordinator's clock (the fence: refused once this server's clock is past)
-- ARGV[18] n, how many packed replies follow: for a commit, every other participant's, in
--          order ('0' otherwise)
-- ARGV[19..18+n] those replies
-- ARGV[19+n..] operations, each an opcode followed by its arguments:
--   R n name1..namen        read (n = 0: everything visible)
--   S name vis value        set field (vis: 'u' public, 'r' private)
--   D name                  delete field
--   I name vis delta min max   increment counter (min/max '' when unbounded)
--   X name                  delete counter
--   V expected              check version
--   F name present value    check field (present '0': must be absent)
--
-- Reply: { status, version, replayed (0/1), failed operation index (from 0),
--          then per read: operation index, entry count, then count x (name, tag, value) }
-- status is OK, CONFLICT, OUT_OF_BOUNDS, PLAYER_TOO_LARGE (the write would grow the player past
-- ARGV[10] or ARGV[11]), TOO_LARGE (the reads passed the budget), TOO_LARGE_CLIENTS (a new
-- client, and the player has ARGV[13] clients already), IDEMPOTENCY_MISMATCH,
-- REQUEST_TOO_OLD, ARCHIVED or INVALID; every status but OK writes nothing (a replay's OK
-- rewrites its record as it is; LOCKED marks the player, see below). A replay returns the stored reply whatever
-- the budget. tag is 'fu', 'fr'
-- (field public/private) or 'cu', 'cr' (counter); counters come back as integers.
--
-- A player holding an intent (meta x) takes no write of a transaction on its own: it answers
-- { 'LOCKED', version, 0, 0, attempt, primary, expired (0/1) } and writes nothing of the
-- player's state; it only marks the player (meta w = until when, now + 1 s) so that no
-- prepare stages a new intent on it (they answer WRITER_WAITING) until a write on its own
-- went through (which clears the mark) or the mark passed. A
-- read-only transaction runs and answers 'OK_INTENT' with the same three extra header
-- fields before its reads: its state is the last applied one, and the caller asks the
-- intent's decision whether a commit is waiting to be applied. A refusal (CONFLICT,
-- OUT_OF_BOUNDS, PLAYER_TOO_LARGE, TOO_LARGE, INVALID, IDEMPOTENCY_MISMATCH, REQUEST_TOO_OLD,
-- TOO_LARGE_CLIENTS) on such a player carries the same three fields after its header, for the
-- same reason.
--
-- In a trade (ARGV[14] = attempt) writes are allowed under public access (the gateway's
-- roles decide who may write whom), another attempt's intent answers LOCKED, and an archived
-- player waits for a whole restore, whatever the access.
--
-- Prepare (ARGV[15] 'P', a participant other than the primary; no key): the operations are
-- staged exactly as above, but instead of being written they are kept as the intent (KEYS[8]:
-- a attempt, p primary, l lease expiry by this server's clock, v version, m 1 when it writes,
-- w staged writes, r the reply the transaction will have once applied), meta x = attempt,
-- and the player in KEYS[9]. The answer is { 'PREPARED', version after the apply, 0, 0,
-- packed reply, reads... }; a prepare repeated for the same attempt answers the same.
--
-- Commit (ARGV[15] 'C', the primary, once every other participant holds its intent): the
-- primary's prepare, the decision and the primary's apply in one script (docs/design/
-- trades.md, step 2). A decision already written for the attempt is written again as it is
-- and answered { 'DECIDED', version, 0, 0, 'C' or 'A' }, writing nothing else. Then the key is
-- judged in the primary's window (a remembered key answers { 'REPLAY', version, 1, 0, then
-- the stored reply of every participant }), and the operations run as for a transaction on
-- its own; a refusal writes nothing (no decision either: only this call writes a commit, so
-- the coordinator rolls the others back without one). A commit whose deadline (ARGV[17])
-- this server's clock has passed answers { 'TOO_LATE', version, 0, 0 } and writes nothing.
-- On success the writes apply, meta y = attempt, the key is remembered with every
-- participant's reply (ARGV[19..]), and the commit is written (d C, p the participants;
-- indexed in KEYS[11]); the answer
-- is { 'COMMITTED', version, 0, 0, packed reply, reads... }. A writer's mark (meta w) keeps
-- new intents off the player; a commit stages none, so it neither waits for the mark nor
-- clears it.
--
-- Operations run in order against a staged view; Redis is written only after every operation
-- succeeded, so a failed check writes nothing. Counters are Lua numbers (doubles) and are kept
-- within +-(2^53 - 1), where doubles are exact; the client validates arguments to that range.
--
-- The idempotency window (docs/design/idempotency-window.md has the argument; window.lua, loaded in front of
-- this script, judges and records requests). Per client, KEYS[1] holds
--   c:<client>            '<floor> <last write ms> <count>' then ' <request>:<applied ms>' for
--                         the oldest remembered request and those remembered since the
--                         window last forgot; count is every remembered request; floor '-'
--                         when nothing was forgotten, else the largest request id forgotten
--   q:<client>            the other remembered requests, between those, oldest first
--   r:<client>:<request>  the request's fingerprint, then the msgpack of its first reply
-- A request remembered is replayed; one at or below the floor is REQUEST_TOO_OLD; any other
-- is new. Invariant: every applied request of a known client is remembered or at or below
-- its floor. The window lives in {id}:meta so that reading and writing it rides on the calls
-- every transaction makes anyway: Redis time per call is mostly per command.

local meta, pub, priv, active, dirty = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local clients, legacy, intent, intents = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local player, access, client, request = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local fingerprint = ARGV[5]
local use_idem = client ~= ''
local window_ms, window_length, client_ttl = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local read_budget = tonumber(ARGV[9])
local max_bytes, max_entries = tonumber(ARGV[10]), tonumber(ARGV[11])
local track_changes = ARGV[12] == '1'
local max_clients = tonumber(ARGV[13])
local attempt = ARGV[14]
local in_trade = attempt ~= ''
local preparing, committing = false, false
if in_trade then
  preparing, committing = ARGV[15] == 'P', ARGV[15] == 'C'
end
local extras = tonumber(ARGV[18])
local FIRST_OP = 19 + extras
local LIMIT = 9007199254740991
-- What a read counts for one entry besides its name and value (ENTRY_OVERHEAD_BYTES).
local ENTRY_OVERHEAD = 16

local state_field, record_field
local state
if use_idem then
  state_field, record_field = 'c:' .. client, 'r:' .. client .. ':' .. request
  state = redis.call('HMGET', meta, 'v', 'a', 'p', 'b', 'n', 'x', 'w', 'm', state_field,
    record_field, 'y')
else
  state = redis.call('HMGET', meta, 'v', 'a', 'p', 'b', 'n', 'x', 'w', 'm', 'y')
end
local last_applied = state[use_idem and 11 or 9]
-- A player parked by a slot move (meta m, the move's tombstone; docs/design/resharding.md)
-- has its keys in the move's parked copies, not here: nothing of it may be read or written
-- until the move restores it on the slot's new owner. Refused before anything is written.
if state[8] then return redis.error_reply('MOVING the player is being moved to another node') end
-- How long a transaction on its own that met an intent keeps new intents off the player
-- (meta w), in ms: longer than the store's longest pause between two attempts (500 ms) plus
-- a replicated acknowledgement of the LOCKED answer (replication_timeout_ms, 500 by default).
local WRITER_WAIT_MS = 2000
local writer_waiting = state[7]
local version = tonumber(state[1] or '0')
-- Never written and never a trade's participant (meta y, the last attempt applied: a
-- trade's primary that only reads stays at version 0 but remembers the trade's key): the
-- player has no idempotency window, client or record of any layout.
local new_player = version == 0 and not last_applied
local holder = state[6]

-- An archived player (meta field a = the version archived) has its entries in MongoDB only.
-- Its public part may have been restored (p = 1) for public reads; anything else waits for
-- the archiver to restore it.
if state[2] and not (access == 'p' and not in_trade and state[3] == '1') then
  return { 'ARCHIVED', version, 0, 0 }
end

-- The intent's attempt, primary, and whether its lease has passed (by this server's clock).
local function intent_header(status)
  local info = redis.call('HMGET', intent, 'p', 'l')
  local expired = 0
  if tonumber(info[2] or '0') <= server_now() then expired = 1 end
  return { status, version, 0, 0, holder, info[1] or '', expired }
end

-- A refusal. On a player holding an intent it names the intent after its header (as
-- OK_INTENT does), so the caller can tell whether a commit waits to be applied first: the
-- refusal was judged against the last applied state.
local function refusal(status, index)
  -- A request with a key is judged by the player's state and its window: they are written
  -- again as they are (the version, else the last trade's mark), so that the WAIT after this
  -- call covers what the refusal was judged by, and it is final only from a master whose
  -- replicas hold that (since Redis 7.2 a WAIT counts only writes the connection itself
  -- propagated). Nothing stored changes.
  if use_idem then
    if state[1] then
      redis.call('HSET', meta, 'v', state[1])
    elseif last_applied then
      redis.call('HSET', meta, 'y', last_applied)
    end
  end
  local reply = { status, version, 0, index }
  if holder and not in_trade then
    local named = intent_header(status)
    reply[5], reply[6], reply[7] = named[5], named[6], named[7]
  end
  return reply
end
if (preparing or committing) and holder then
  -- (A primary never holds its own attempt's intent: it is staged and applied in one call.)
  if holder ~= attempt or committing then return intent_header('LOCKED') end
  -- A prepare repeated: the answer it had. The staged reply is written again as it is, so a
  -- WAIT after this call covers the intent, which may have gone out on another connection.
  local packed = redis.call('HGET', intent, 'r')
  redis.call('HSET', intent, 'r', packed)
  local reply = cmsgpack.unpack(packed)
  local answer = { 'PREPARED', reply[2], 0, 0, packed }
  for k = 5, #reply do answer[#answer + 1] = reply[k] end
  return answer
end

if committing then
  -- Decided already (this call's commit sent before, or a resolver's abort): written again
  -- as it is, so a WAIT after this call covers it.
  local held = redis.call('HGET', KEYS[10], 'd')
  if held then
    redis.call('HSET', KEYS[10], 'd', held)
    return { 'DECIDED', version, 0, 0, held }
  end
end

-- Answers a request found remembered: its first reply, or a mismatch.
local function replay(stored)
  if string.sub(stored, 1, 40) ~= fingerprint then
    return refusal('IDEMPOTENCY_MISMATCH', 0)
  end
  local reply = cmsgpack.unpack(string.sub(stored, 41))
  reply[3] = 1
  return reply
end

local window_state
if use_idem then
  window_state = state[9]
  local verdict, stored = judge_request(meta, clients, client_ttl, max_clients, request,
    window_state, state[10], new_player)
  if verdict == 'CLIENTS_FULL' then
    return refusal('TOO_LARGE_CLIENTS', 0)
  elseif verdict == 'REQUEST_TOO_OLD' then
    return refusal('REQUEST_TOO_OLD', 0)
  elseif verdict == 'REPLAY' and in_trade then
    -- A multi-player transaction applied before: every participant's stored reply.
    return replay_multi(meta, record_field, stored, fingerprint, version)
  elseif verdict == 'REPLAY' then
    local reply = replay(stored)
    -- The record is written again as it is: that is propagated to the replicas, so a WAIT
    -- after this call also covers the first write, which may have gone out on another
    -- connection.
    if reply[1] == 'OK' then redis.call('HSET', meta, record_field, stored) end
    return reply
  end
  -- Records of the previous layout, one key per request, are honoured until they expire
  -- (a player never written has none).
  local old = not in_trade and not new_player and redis.call('GET', legacy)
  if old then
    local reply = replay(old)
    if reply[1] == 'OK' then redis.call('SET', legacy, old, 'KEEPTTL') end
    return reply
  end
end

-- A transaction on its own that met an intent marked the player (meta w = until when): no new
-- intent is staged until that write went through or the mark passed, so a player that a
-- stream of trades keeps locked still takes its own writes. Judged after the key, so a
-- replay never waits.
if preparing and writer_waiting and tonumber(writer_waiting) > server_now() then
  return { 'WRITER_WAITING', version, 0, 0 }
end

-- staged[hash][entry] = new value, or false for deleted.
local staged = { [pub] = {}, [priv] = {} }
local function lookup(hash, entry)
  local s = staged[hash][entry]
  if s ~= nil then
    if s == false then return nil end
    return s
  end
  local v = redis.call('HGET', hash, entry)
  if v == false then return nil end
  return v
end

-- Returns value, hash of the entry as the caller may see it.
local function find(entry)
  local v = lookup(pub, entry)
  if v ~= nil then return v, pub end
  if access == 'o' then
    v = lookup(priv, entry)
    if v ~= nil then return v, priv end
  end
  return nil, nil
end

local function tag_of(kind, hash)
  if hash == pub then return kind .. 'u' end
  return kind .. 'r'
end

-- Bytes the reads have returned; past the budget the transaction fails with TOO_LARGE.
local spent = 0
local over_budget = false

local function emit(out, name, kind, value, hash)
  spent = spent + #name + #value + ENTRY_OVERHEAD
  if spent > read_budget then
    over_budget = true
    return
  end
  out[#out + 1] = name
  out[#out + 1] = tag_of(kind, hash)
  if kind == 'c' then
    out[#out + 1] = tonumber(value)
  else
    out[#out + 1] = value
  end
end

-- Every visible entry, in no particular order.
local function read_all(out)
  local hashes = { pub }
  if access == 'o' then hashes[2] = priv end
  local seen, list = {}, {}
  for _, hash in ipairs(hashes) do
    local flat = redis.call('HGETALL', hash)
    for i = 1, #flat, 2 do seen[flat[i]] = true end
    for entry, _ in pairs(staged[hash]) do seen[entry] = true end
  end
  for entry, _ in pairs(seen) do
    if over_budget then return end
    local value, hash = find(entry)
    if value ~= nil then
      list[#list + 1] = { string.sub(entry, 3), string.sub(entry, 1, 1), value, hash }
    end
  end
  -- Not sorted here: Lua compares strings with the server's locale (strcoll), so the client
  -- sorts bytewise instead.
  for _, e in ipairs(list) do emit(out, e[1], e[2], e[3], e[4]) end
end

local reads = {}
local mutated = false
local last_write = 0
local i, op = FIRST_OP, 0
local function fail(status)
  return refusal(status, op)
end

while i <= #ARGV do
  local code = ARGV[i]
  if code == 'R' then
    local n = tonumber(ARGV[i + 1])
    local out = {}
    if n == 0 then
      read_all(out)
    else
      for k = 1, n do
        local name = ARGV[i + 1 + k]
        for _, kind in ipairs({ 'f', 'c' }) do
          local value, hash = find(kind .. ':' .. name)
          if value ~= nil then emit(out, name, kind, value, hash) end
        end
      end
    end
    if over_budget then return fail('TOO_LARGE') end
    reads[#reads + 1] = { op, out }
    i = i + 2 + n
  elseif code == 'V' then
    if version ~= tonumber(ARGV[i + 1]) then return fail('CONFLICT') end
    i = i + 2
  elseif code == 'F' then
    local value = find('f:' .. ARGV[i + 1])
    if ARGV[i + 2] == '0' then
      if value ~= nil then return fail('CONFLICT') end
    elseif value ~= ARGV[i + 3] then
      return fail('CONFLICT')
    end
    i = i + 4
  elseif access ~= 'o' and not in_trade then
    -- The client never sends writes with public access; refuse rather than trust it.
    return fail('INVALID')
  elseif code == 'S' or code == 'I' then
    local kind = (code == 'S') and 'f' or 'c'
    local entry = kind .. ':' .. ARGV[i + 1]
    local target, other = pub, priv
    if ARGV[i + 2] == 'r' then target, other = priv, pub end
    local value
    if code == 'S' then
      value = ARGV[i + 3]
      i = i + 4
      staged[other][entry] = false
    else
      -- Look in the target hash first: a counter usually keeps its visibility, and then the
      -- other hash needs neither a lookup nor a delete.
      local current = lookup(target, entry)
      if current == nil then
        current = lookup(other, entry)
        if current ~= nil then staged[other][entry] = false end
      end
      local new = tonumber(current or '0') + tonumber(ARGV[i + 3])
      local min, max = ARGV[i + 4], ARGV[i + 5]
      if (min ~= '' and new < tonumber(min)) or (max ~= '' and new > tonumber(max))
          or new > LIMIT or new < -LIMIT then
        return fail('OUT_OF_BOUNDS')
      end
      value = string.format('%d', new)
      i = i + 6
    end
    staged[target][entry] = value
    mutated = true
    last_write = op
  elseif code == 'D' or code == 'X' then
    local entry = ((code == 'D') and 'f:' or 'c:') .. ARGV[i + 1]
    staged[pub][entry] = false
    staged[priv][entry] = false
    mutated = true
    last_write = op
    i = i + 2
  else
    return fail('INVALID')
  end
  op = op + 1
end

local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
-- The fence (docs/design/trades.md, step 2): no commit past its deadline, by this server's
-- clock, so none can follow a resolver's abort record that expired. Before any write.
if committing and now > tonumber(ARGV[17]) then return { 'TOO_LATE', version, 0, 0 } end

local tally, writes
if mutated then
  -- The player's size before and after: the tally in meta (counted afresh when absent, e.g.
  -- after a rebuild), adjusted by every staged entry's old and new length.
  local bytes, entries = tonumber(state[4] or ''), tonumber(state[5] or '')
  if bytes == nil or entries == nil then
    bytes, entries = 0, 0
    for _, hash in ipairs({ pub, priv }) do
      local flat = redis.call('HGETALL', hash)
      for k = 1, #flat, 2 do
        bytes = bytes + #flat[k] - 2 + #flat[k + 1]
        entries = entries + 1
      end
    end
  end
  local new_bytes, new_entries = bytes, entries
  for _, hash in ipairs({ pub, priv }) do
    for entry, value in pairs(staged[hash]) do
      local old = redis.call('HSTRLEN', hash, entry)
      if old > 0 or redis.call('HEXISTS', hash, entry) == 1 then
        new_bytes = new_bytes - (#entry - 2 + old)
        new_entries = new_entries - 1
      end
      if value ~= false then
        new_bytes = new_bytes + #entry - 2 + #value
        new_entries = new_entries + 1
      end
    end
  end
  -- A write may not grow a player past the bounds; one that shrinks a player already over
  -- them (the bounds were lowered) is allowed.
  if (new_bytes > max_bytes and new_bytes > bytes)
      or (new_entries > max_entries and new_entries > entries) then
    return refusal('PLAYER_TOO_LARGE', last_write)
  end
  -- The writes, per hash: flat (entry, value) pairs to set, and entries to delete.
  writes = {}
  for _, hash in ipairs({ pub, priv }) do
    local sets, dels = {}, {}
    for entry, value in pairs(staged[hash]) do
      if value == false then
        dels[#dels + 1] = entry
      else
        sets[#sets + 1] = entry
        sets[#sets + 1] = value
      end
    end
    writes[#writes + 1] = sets
    writes[#writes + 1] = dels
  end
  tally = { new_bytes, new_entries }
end

local function reply_with_reads(header)
  for _, r in ipairs(reads) do
    header[#header + 1] = r[1]
    header[#header + 1] = #r[2] / 3
    for _, v in ipairs(r[2]) do header[#header + 1] = v end
  end
  return header
end

if preparing then
  -- Kept as the intent instead of written; the apply writes it as staged.
  local after = version
  if mutated then after = version + 1 end
  local packed = cmsgpack.pack(reply_with_reads({ 'OK', after, 0, 0 }))
  local lease_end = now + tonumber(ARGV[17])
  local staged_writes = ''
  if mutated then
    staged_writes = cmsgpack.pack({ writes[1], writes[2], writes[3], writes[4], tally[1],
      tally[2] })
  end
  redis.call('HSET', intent, 'a', attempt, 'p', ARGV[16], 'l', lease_end, 'v', version,
    'm', mutated and 1 or 0, 'w', staged_writes, 'r', packed)
  redis.call('HSET', meta, 'x', attempt)
  redis.call('ZADD', intents, lease_end, player)
  return reply_with_reads({ 'PREPARED', after, 0, 0, packed })
end

-- Another transaction's intent: no write until it is applied or rolled back. The player is
-- marked so that no new intent is staged before this write's retry (see WRITER_WAITING).
if holder and mutated then
  -- Only a priority: a server that refuses writes now (NOREPLICAS, OOM) still answers LOCKED.
  redis.pcall('HSET', meta, 'w', server_now() + WRITER_WAIT_MS)
  return intent_header('LOCKED')
end

if mutated then
  for k, hash in ipairs({ pub, priv }) do
    local sets, dels = writes[2 * k - 1], writes[2 * k]
    if #dels > 0 then redis.call('HDEL', hash, unpack(dels)) end
    if #sets > 0 then redis.call('HSET', hash, unpack(sets)) end
  end
  version = version + 1
elseif access == 'o' and version > 0 then
  -- An owner's read is activity too; reads by others are not.
  redis.call('HSET', meta, 't', now)
  redis.call('ZADD', active, now, player)
end

if holder then
  -- Read-only, on a player holding an intent: the state as it is, with the intent named.
  return reply_with_reads(intent_header('OK_INTENT'))
end

local reply = reply_with_reads({ 'OK', version, 0, 0 })

if committing then
  -- The primary applied (above), its key remembered with every participant's reply, and the
  -- commit written: one atomic write, replicated together.
  local packed = cmsgpack.pack(reply)
  local results = { packed }
  for k = 19, 18 + extras do results[#results + 1] = ARGV[k] end
  local meta_fields = { 'y', attempt }
  if mutated then
    for _, f in ipairs({ 'v', version, 't', now, 'b', tally[1], 'n', tally[2] }) do
      meta_fields[#meta_fields + 1] = f
    end
    redis.call('ZADD', active, now, player)
    if track_changes then redis.call('SADD', dirty, player) end
  end
  local remembered = remember_request(meta, client, request, window_state, window_ms,
    window_length, now, fingerprint .. cmsgpack.pack(results))
  for _, field in ipairs(remembered) do meta_fields[#meta_fields + 1] = field end
  redis.call('HSET', meta, unpack(meta_fields))
  if not window_state and redis.call('ZADD', clients, 'NX', now, client) == 1
      and not new_player then
    forget_stale_clients(meta, clients, client_ttl, now)
  end
  redis.call('HSET', KEYS[10], 'd', 'C', 'p', ARGV[16])
  redis.call('ZADD', KEYS[11], now, KEYS[10])
  local answer = { 'COMMITTED', version, 0, 0, packed }
  for k = 5, #reply do answer[#answer + 1] = reply[k] end
  return answer
end

if not mutated then return reply end

local meta_fields = { 'v', version, 't', now, 'b', tally[1], 'n', tally[2] }
if use_idem then
  local remembered = remember_request(meta, client, request, window_state, window_ms,
    window_length, now, fingerprint .. cmsgpack.pack(reply))
  for _, field in ipairs(remembered) do meta_fields[#meta_fields + 1] = field end
end
redis.call('HSET', meta, unpack(meta_fields))
if writer_waiting then redis.call('HDEL', meta, 'w') end
redis.call('ZADD', active, now, player)
-- The archiver's checkpoints copy changed players to MongoDB.
if track_changes then redis.call('SADD', dirty, player) end

-- A player never written had no other client to forget.
if use_idem and not window_state and redis.call('ZADD', clients, 'NX', now, client) == 1
    and not new_player then
  forget_stale_clients(meta, clients, client_ttl, now)
end
return reply
