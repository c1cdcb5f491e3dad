-- Removes a player from Redis after MongoDB acknowledged its document, but only if nothing
-- changed since the snapshot: the version must still be the archived one, and the player must
-- not have become active again. Leaves {id}:meta as the marker a = version (with v and t):
-- its idempotency windows go, and the document keeps each client's floor.
-- KEYS[1] {id}:meta, KEYS[2] {id}:pub, KEYS[3] {id}:priv, KEYS[4] colony:{<slot tag>}:active,
-- KEYS[5] {id}:clients
-- ARGV[1] player id, ARGV[2] version written to MongoDB, ARGV[3] cutoff (last-active ms)
-- Reply: ARCHIVED, ALREADY (already archived), CHANGED (newer version), ACTIVE, or LOCKED
-- (the player holds a multi-player transaction's intent, meta x: never archived then).
--
-- Activity is judged by meta t, which every write and owner read sets, not by the set's
-- score: a score moved from the legacy per-shard set may be older than t. An active player
-- gets its score corrected, so it is not picked again before it is inactive. A write that
-- only replayed changes neither the version nor the windows' floors the document holds.
local m = redis.call('HMGET', KEYS[1], 'v', 'a', 't', 'x', 'm')
-- Parked by a slot move (meta m; docs/design/resharding.md): nothing read or written.
if m[5] then return redis.error_reply('MOVING the player is being moved to another node') end
if m[2] then return 'ALREADY' end
if m[4] then return 'LOCKED' end
if tonumber(m[1] or '0') ~= tonumber(ARGV[2]) then return 'CHANGED' end
if m[3] and tonumber(m[3]) > tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[4], 'GT', m[3], ARGV[1])
  return 'ACTIVE'
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5])
-- The meta is emptied in place, never deleted: while its slot is MIGRATING, a key deleted
-- could not be written again ("non local key"), and the script would stop half-way.
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'a', ARGV[2], 't', m[3] or '0')
local drop = {}
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if f ~= 'v' and f ~= 'a' and f ~= 't' then drop[#drop + 1] = f end
  if #drop == 1000 then
    redis.call('HDEL', KEYS[1], unpack(drop))
    drop = {}
  end
end
if #drop > 0 then redis.call('HDEL', KEYS[1], unpack(drop)) end
redis.call('ZREM', KEYS[4], ARGV[1])
return 'ARCHIVED'
