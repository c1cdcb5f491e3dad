-- Removes a player from Redis after MongoDB acknowledged its document, but only if nothing
-- changed since the snapshot: the version must still be the archived one, and the player must
-- not have become active again. Leaves the marker a = version in {id}:meta.
-- KEYS[1] {id}:meta, KEYS[2] {id}:pub, KEYS[3] {id}:priv, KEYS[4] colony:active
-- ARGV[1] player id, ARGV[2] version written to MongoDB, ARGV[3] cutoff (last-active ms)
-- Reply: ARCHIVED, ALREADY (already archived), CHANGED (newer version) or ACTIVE.
local m = redis.call('HMGET', KEYS[1], 'v', 'a')
if m[2] then return 'ALREADY' end
if tonumber(m[1] or '0') ~= tonumber(ARGV[2]) then return 'CHANGED' end
local score = redis.call('ZSCORE', KEYS[4], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[3]) then return 'ACTIVE' end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'a', ARGV[2])
redis.call('HDEL', KEYS[1], 'p')
redis.call('ZREM', KEYS[4], ARGV[1])
return 'ARCHIVED'
