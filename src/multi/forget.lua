-- Forgets a commit record once every participant of its attempt was applied.
-- KEYS[1] {primary}:decision:<attempt>  KEYS[2] colony:{<slot tag>}:decisions
-- KEYS[3] {primary}:meta
-- ARGV[1] (optional) 'entry': drop only the index entry, and only when the record itself is
-- absent here (the sweep found an entry whose record it could not read: a server that is no
-- longer the master may have answered, so the record is not deleted on its word).
-- While a slot move has the primary parked (meta m), its records are parked with it and the
-- index entry must travel with them: refused with the error MOVING, nothing written.
if redis.call('HEXISTS', KEYS[3], 'm') == 1 then
  return redis.error_reply('MOVING the player is being moved to another node')
end
if ARGV[1] == 'entry' then
  if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
  return redis.call('ZREM', KEYS[2], KEYS[1])
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
