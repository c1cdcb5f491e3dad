-- Refills one player of an emptied shard from its MongoDB document, never over live data.
-- KEYS and ARGV as write_back.lua says; ARGV[3] is 'a' (archived: the marker only; the
-- floors come back with its restore) or 'c' (checkpoint: the live player, with its floors).
-- (write_back.lua, loaded in front, defines hset, put_back_floors and the argument bounds.)
-- Reply: EXISTS (left alone), MARKED or LIVE.
if redis.call('EXISTS', KEYS[1]) == 1 then return 'EXISTS' end
if ARGV[3] == 'a' then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'a', ARGV[2])
  return 'MARKED'
end
if npub > 0 then hset(KEYS[2], 6, first_private - 1) end
if last_private >= first_private then hset(KEYS[3], first_private, last_private) end
put_back_floors()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'v', ARGV[2], 't', now)
redis.call('ZADD', KEYS[4], now, ARGV[1])
return 'LIVE'
