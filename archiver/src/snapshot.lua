-- Reads a player for archiving, without touching it.
-- KEYS[1] {id}:meta, KEYS[2] {id}:pub, KEYS[3] {id}:priv, KEYS[4] {id}:clients
-- Reply: { version, archived-at version or -1, public hash (flat), private hash (flat),
--          flat (client, window state) pairs of the clients with a window, each state
--          followed by the middle of its queue }
local m = redis.call('HMGET', KEYS[1], 'v', 'a', 'm')
-- Parked by a slot move (meta m; docs/design/resharding.md): its entries are not here, and
-- an empty snapshot must never reach MongoDB.
if m[3] then return redis.error_reply('MOVING the player is being moved to another node') end
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
