-- Applies (a commit) or rolls back (an abort) one participant of a multi-player transaction.
-- Loaded behind window.lua. docs/design/trades.md has the protocol.
--
-- KEYS[1] {id}:meta  KEYS[2] {id}:pub  KEYS[3] {id}:priv  KEYS[4] {id}:intent
-- KEYS[5] colony:{<slot tag>}:active  KEYS[6] colony:{<slot tag>}:dirty
-- KEYS[7] {id}:clients  KEYS[8] colony:{<slot tag>}:intents
-- KEYS[9] the attempt's decision record when this player is the primary (same slot), else
--         KEYS[1] again
-- ARGV[1] player id  ARGV[2] attempt  ARGV[3] 'c' apply (committed) or 'a' roll back
-- ARGV[4] '1' when writes are recorded in KEYS[6] for checkpoints
-- ARGV[5] window age ms  ARGV[6] window length  ARGV[7] client TTL ms
--
-- Acts only while the player holds this attempt's intent (meta x). The primary's apply also
-- records the transaction's key in its window with every participant's reply (from the
-- decision record), whoever runs it — the coordinator or a resolver — so a replay of the key
-- finds it. Reply: APPLIED, ROLLED_BACK, ALREADY (this attempt was applied before: meta y),
-- or NO_INTENT (the player holds no intent of this attempt, and none was applied; nothing
-- written); the error MOVING (nothing written) while a slot move has the player parked.

local meta, pub, priv, intent = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local active, dirty, clients, intents, decision = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local player, attempt, action = ARGV[1], ARGV[2], ARGV[3]

local marks = redis.call('HMGET', meta, 'x', 'y', 'm')
-- Parked by a slot move (docs/design/resharding.md): refused, nothing written.
if marks[3] then return redis.error_reply('MOVING the player is being moved to another node') end
if marks[1] ~= attempt then
  if marks[2] == attempt then
    -- Applied before, perhaps on another connection: written again as it is, so a WAIT
    -- after this call covers the apply.
    redis.call('HSET', meta, 'y', attempt)
    return 'ALREADY'
  end
  return 'NO_INTENT'
end

local function drop_intent()
  redis.call('DEL', intent)
  redis.call('HDEL', meta, 'x')
  redis.call('ZREM', intents, player)
end

if action == 'a' then
  drop_intent()
  -- A player that never existed keeps no meta for a waiting writer's mark alone.
  if redis.call('HEXISTS', meta, 'v') == 0 then redis.call('HDEL', meta, 'w') end
  return 'ROLLED_BACK'
end

local staged = redis.call('HMGET', intent, 'm', 'w', 'v', 'c', 'q', 'f')
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

local client = staged[4]
if client and decision ~= meta then
  -- The primary remembers the transaction's key with every participant's reply.
  local replies = redis.call('HGET', decision, 'r') or cmsgpack.pack({})
  local window_state = redis.call('HGET', meta, 'c:' .. client)
  local remembered = remember_request(meta, client, staged[5], window_state, tonumber(ARGV[5]),
    tonumber(ARGV[6]), now, staged[6] .. replies)
  for _, f in ipairs(remembered) do fields[#fields + 1] = f end
  if not window_state and redis.call('ZADD', clients, 'NX', now, client) == 1 then
    forget_stale_clients(meta, clients, tonumber(ARGV[7]), now)
  end
end

redis.call('HSET', meta, unpack(fields))
drop_intent()
return 'APPLIED'
