-- Refills one player of an emptied shard from its MongoDB document, never over live data.
-- KEYS[1] {id}:meta, KEYS[2] {id}:pub, KEYS[3] {id}:priv, KEYS[4] colony:{<slot tag>}:active
-- ARGV[1] player id, ARGV[2] version, ARGV[3] 'a' (archived: the marker only) or 'c'
-- (checkpoint: the live player), ARGV[4] number of public pairs n, then the public pairs,
-- then the private pairs.
-- (write_back.lua, loaded in front, defines hset, npub and first_private.)
-- Reply: EXISTS (left alone), MARKED or LIVE.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'EXISTS' end
if ARGV[3] == 'a' then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'a', ARGV[2])
  return 'MARKED'
end
if npub > 0 then hset(KEYS[2], 5, first_private - 1) end
if #ARGV >= first_private then hset(KEYS[3], first_private, #ARGV) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'v', ARGV[2], 't', now)
redis.call('ZADD', KEYS[4], now, ARGV[1])
return 'LIVE'
