-- Clears a player's "changed" flag after its checkpoint, unless it changed again meanwhile.
-- KEYS[1] {id}:meta, KEYS[2] colony:{<slot tag>}:dirty; ARGV[1] player id, ARGV[2] checkpointed version.
-- Reply: 1 when cleared, 0 when it stays dirty.
-- Parked by a slot move (meta m; docs/design/resharding.md): the flag stays, nothing written.
if redis.call('HEXISTS', KEYS[1], 'm') == 1 then return redis.error_reply('MOVING the player is being moved to another node') end
local v = redis.call('HGET', KEYS[1], 'v')
if v and tonumber(v) ~= tonumber(ARGV[2]) and not redis.call('HGET', KEYS[1], 'a') then
  return 0
end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
