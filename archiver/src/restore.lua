-- Puts an archived player's entries back from its MongoDB document. Safe to run concurrently
-- and repeatedly: only a player still marked archived at exactly the document's version is
-- touched, and the public part is written once.
-- KEYS and ARGV as write_back.lua says; ARGV[3] is '1' for everything, '0' for the public
-- part. The client floors come back with everything.
-- (write_back.lua, loaded in front, defines hset, put_back_floors and the argument bounds.)
-- Reply: RESTORED, PUBLIC_RESTORED, NOT_ARCHIVED or VERSION_MISMATCH.
local m = redis.call('HMGET', KEYS[1], 'a', 'p', 'm')
-- Parked by a slot move (meta m; docs/design/resharding.md): restored once it is on the
-- slot's new owner.
if m[3] then return redis.error_reply('MOVING the player is being moved to another node') end
if not m[1] then return 'NOT_ARCHIVED' end
if tonumber(m[1]) ~= tonumber(ARGV[2]) then return 'VERSION_MISMATCH' end

if m[2] ~= '1' and npub > 0 then hset(KEYS[2], 6, first_private - 1) end
if ARGV[3] == '1' then
  if last_private >= first_private then hset(KEYS[3], first_private, last_private) end
  put_back_floors()
  -- The size tally (b, n) is counted afresh by the player's next write.
  redis.call('HDEL', KEYS[1], 'a', 'p', 'b', 'n')
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 't', now)
  redis.call('ZADD', KEYS[4], now, ARGV[1])
  return 'RESTORED'
end
redis.call('HSET', KEYS[1], 'p', '1')
return 'PUBLIC_RESTORED'
