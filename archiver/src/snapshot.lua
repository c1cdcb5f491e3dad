-- Reads a player for archiving, without touching it.
-- KEYS[1] {id}:meta, KEYS[2] {id}:pub, KEYS[3] {id}:priv
-- Reply: { version, archived-at version or -1, public hash (flat), private hash (flat) }
local m = redis.call('HMGET', KEYS[1], 'v', 'a')
return {
  tonumber(m[1] or '0'),
  tonumber(m[2] or '-1'),
  redis.call('HGETALL', KEYS[2]),
  redis.call('HGETALL', KEYS[3]),
}
