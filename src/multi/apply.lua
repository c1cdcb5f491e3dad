-- Applies (a commit) or rolls back (an abort) one participant of a multi-player transaction.
-- Loaded behind window.lua. ARCHITECTURE.md, "Transactions across shards", has the protocol.
--
-- KEYS[1] {id}:meta  KEYS[2] {id}:pub  KEYS[3] {id}:priv  KEYS[4] {id}:intent
-- KEYS[5] colony:{<slot tag>}:active  KEYS[6] colony:{<slot tag>}:dirty
-- KEYS[7] {id}:clients  KEYS[8] colony:{<slot tag>}:intents
-- ARGV[1] player id  ARGV[2] attempt  ARGV[3] 'c' apply (committed) or 'a' roll back
-- ARGV[4] '1' when writes are recorded in KEYS[6] for checkpoints
-- ARGV[5] client id of the transaction's key on the primary participant, else ''
-- ARGV[6] request id  ARGV[7] fingerprint  ARGV[8] window age ms  ARGV[9] window length
-- ARGV[10] client TTL ms  ARGV[11..] every participant's packed reply, in order (primary)
--
-- Acts only while the player holds this attempt's intent (meta x). Reply: APPLIED,
-- ROLLED_BACK, ALREADY (this attempt was applied before: meta y), or NO_INTENT (the player
-- holds no intent of this attempt, and none was applied).

local meta, pub, priv, intent = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local active, dirty, clients, intents = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local player, attempt, action = ARGV[1], ARGV[2], ARGV[3]

local marks = redis.call('HMGET', meta, 'x', 'y')
if marks[1] ~= attempt then
  if marks[2] == attempt then return 'ALREADY' end
  return 'NO_INTENT'
end

local function drop_intent()
  redis.call('DEL', intent)
  redis.call('HDEL', meta, 'x')
  redis.call('ZREM', intents, player)
end

if action == 'a' then
  drop_intent()
  return 'ROLLED_BACK'
end

local staged = redis.call('HMGET', intent, 'm', 'w', 'v')
local now = server_now()
local fields = { 'y', attempt }
if staged[1] == '1' then
  -- Nothing else could write the player while it held the intent: the staged writes apply to
  -- the state they were staged against.
  local w = cmsgpack.unpack(staged[2])
  for k, hash in ipairs({ pub, priv }) do
    local sets, dels = w[2 * k - 1], w[2 * k]
    if #dels > 0 then redis.call('HDEL', hash, unpack(dels)) end
    if #sets > 0 then redis.call('HSET', hash, unpack(sets)) end
  end
  for _, f in ipairs({ 'v', tonumber(staged[3]) + 1, 't', now, 'b', w[5], 'n', w[6] }) do
    fields[#fields + 1] = f
  end
  redis.call('ZADD', active, now, player)
  if ARGV[4] == '1' then redis.call('SADD', dirty, player) end
end

local client = ARGV[5]
if client ~= '' then
  -- The primary remembers the transaction's key with every participant's reply, so a
  -- replay of the key answers as the commit did.
  local window_state = redis.call('HGET', meta, 'c:' .. client)
  local replies = {}
  for k = 11, #ARGV do replies[#replies + 1] = ARGV[k] end
  local remembered = remember_request(meta, client, ARGV[6], window_state, tonumber(ARGV[8]),
    tonumber(ARGV[9]), now, ARGV[7] .. cmsgpack.pack(replies))
  for _, f in ipairs(remembered) do fields[#fields + 1] = f end
  if not window_state and redis.call('ZADD', clients, 'NX', now, client) == 1 then
    forget_stale_clients(meta, clients, tonumber(ARGV[10]), now)
  end
end

redis.call('HSET', meta, unpack(fields))
drop_intent()
return 'APPLIED'
