#!lua flags=allow-oom
-- Reads a player for archiving or a checkpoint, and writes its version again as it is.
-- KEYS[1] {id}:meta, KEYS[2] {id}:pub, KEYS[3] {id}:priv, KEYS[4] {id}:clients
-- Reply: { version, archived-at version or -1, public hash (flat), private hash (flat),
--          flat (client, window state) pairs of the clients with a window, each state
--          followed by the middle of its queue }
local m = redis.call('HMGET', KEYS[1], 'v', 'a', 'm')
-- Parked by a slot move (meta m; docs/design/resharding.md): its entries are not here, and
-- an empty snapshot must never reach MongoDB.
if m[3] then return redis.error_reply('MOVING the player is being moved to another node') end
-- The one write, of the value already there: it makes the call a write that the store
-- acknowledges (in `replicated` mode, `WAIT` on the link that sent it), and the replication
-- stream is in order, so an acknowledged snapshot is on every replica a failover could
-- promote. Without it, a snapshot could hand MongoDB a write only the master took; a
-- failover takes that write back, and the document, newer than the player the shard kept,
-- would outrank it for good (archived later at the kept version, the player would never be
-- restored: the versions differ). `allow-oom` (the first line): the value is the one there,
-- so it grows nothing, and a shard at `maxmemory` must still be archived, which is what
-- frees it. Redis still refuses the script on a replica and without its replicas
-- (`min-replicas-to-write`), before it runs.
if m[1] and not m[2] then redis.call('HSET', KEYS[1], 'v', m[1]) end
local windows = {}
local clients = redis.call('ZRANGE', KEYS[4], 0, -1)
for _, client in ipairs(clients) do
  -- The state and the middle of its queue (window.lua): every remembered id, for the floor.
  local parts = redis.call('HMGET', KEYS[1], 'c:' .. client, 'q:' .. client)
  if parts[1] then
    windows[#windows + 1] = client
    windows[#windows + 1] = parts[1] .. (parts[2] or '')
  end
end
return {
  tonumber(m[1] or '0'),
  tonumber(m[2] or '-1'),
  redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]),
  windows,
}
