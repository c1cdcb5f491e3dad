-- Forgets a commit record once every participant of its attempt was applied.
-- KEYS[1] {primary}:decision:<attempt>  KEYS[2] colony:{<slot tag>}:decisions
-- KEYS[3] {primary}:meta
-- While a slot move has the primary parked (meta m), its records are parked with it and the
-- index entry must travel with them: refused with the error MOVING, nothing written.
if redis.call('HEXISTS', KEYS[3], 'm') == 1 then
  return redis.error_reply('MOVING the player is being moved to another node')
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
