-- Forgets a commit record once every participant of its attempt was applied.
-- KEYS[1] {primary}:decision:<attempt>  KEYS[2] colony:{<slot tag>}:decisions
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], KEYS[1])
return 1
