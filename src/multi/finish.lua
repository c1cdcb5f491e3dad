-- Finishing one participant of a multi-player transaction: apply (a commit) or roll back (an
-- abort). Loaded behind window.lua and in front of apply.lua, which calls it.
-- docs/design/trades.md has the protocol.
--
-- keys: meta, pub, priv, intent ({id}:...), active, dirty, clients, intents (the slot's
-- sets), and decision: the attempt's decision record when this player is the primary (same
-- slot), else meta again.
--
-- Acts only while the player holds this attempt's intent (meta x). A primary holds an intent
-- only when an earlier version prepared it (this version's commit applies the primary in
-- the commit script): its apply also records the transaction's key in its window with every
-- participant's reply, read from the decision record (`r`; an error, nothing written, when
-- it holds none), whoever runs it, so a replay of the key finds it. Returns APPLIED, ROLLED_BACK, ALREADY (this attempt
-- was applied before: meta y), or NO_INTENT (the player holds no intent of this attempt, and
-- none was applied; nothing of the player changes, a field is written again as it is);
-- the error MOVING (nothing written) while a slot move
-- has the player parked.
local function finish_participant(keys, player, attempt, action, track, window_ms,
                                  window_length, client_ttl)
  local meta, pub, priv, intent = keys[1], keys[2], keys[3], keys[4]
  local active, dirty, clients, intents, decision = keys[5], keys[6], keys[7], keys[8], keys[9]

  local marks = redis.call('HMGET', meta, 'x', 'y', 'm', 'v')
  -- Parked by a slot move (docs/design/resharding.md): refused, nothing written.
  if marks[3] then
    return redis.error_reply('MOVING the player is being moved to another node')
  end
  if marks[1] ~= attempt then
    if marks[2] == attempt then
      -- Applied before, perhaps on another connection: written again as it is, so a WAIT
      -- after this call covers the apply.
      redis.call('HSET', meta, 'y', attempt)
      return 'ALREADY'
    end
    -- What dropped the intent (someone else's apply, a roll back) was written before this
    -- call, perhaps on another connection and not yet replicated: a field is written again
    -- as it is (the last apply's mark, else the version), so that a WAIT after this call
    -- covers it too, and whoever acts on this answer (forgetting a commit record) acts on a
    -- state a failover keeps. A player with neither has nothing to keep.
    if marks[2] then
      redis.call('HSET', meta, 'y', marks[2])
    elseif marks[4] then
      redis.call('HSET', meta, 'v', marks[4])
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
  local client = staged[4]
  local primary_key = client and decision ~= meta
  local replies
  if primary_key then
    -- A primary applied apart from its commit (a record of an earlier version): the replies
    -- its window remembers come from the record. Checked before anything is written: a key
    -- remembered without them would answer every replay wrongly.
    replies = redis.call('HGET', decision, 'r')
    if not replies then
      return redis.error_reply('ERR the commit record holds no results for the primary')
    end
  end
  local now = server_now()
  local fields = { 'y', attempt }
  if staged[1] == '1' then
    -- Nothing else could write the player while it held the intent: the staged writes apply
    -- to the state they were staged against.
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
    if track == '1' then redis.call('SADD', dirty, player) end
  end

  if primary_key then
    -- The primary remembers the transaction's key with every participant's reply.
    local window_state = redis.call('HGET', meta, 'c:' .. client)
    local remembered = remember_request(meta, client, staged[5], window_state,
      tonumber(window_ms), tonumber(window_length), now, staged[6] .. replies)
    for _, f in ipairs(remembered) do fields[#fields + 1] = f end
    if not window_state and redis.call('ZADD', clients, 'NX', now, client) == 1 then
      forget_stale_clients(meta, clients, tonumber(client_ttl), now)
    end
  end

  redis.call('HSET', meta, unpack(fields))
  drop_intent()
  return 'APPLIED'
end
