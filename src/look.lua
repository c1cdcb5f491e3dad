-- Reads keys of one player (or of a trade's primary) unless a slot move has it parked: the
-- store's reads of a player's keys outside its transaction script (the decision a reader
-- peeks at, whether a participant holds an intent, the sweep's look at an intent or a commit
-- record, `inspect`) go through here, so none of them reads a parked player as absent.
-- KEYS[1] the player's {id}:meta (for a decision record, its primary's)
-- KEYS[2..] keys of the same player to read (KEYS[1] again to read meta itself)
-- ARGV[1] 'HGET', 'HMGET' or 'HGETALL'; ARGV[2..] the fields, for every key alike
-- Reply: one reply of ARGV[1] per key of KEYS[2..], in order; the error MOVING (nothing
-- read) while meta holds a slot move's tombstone (field m; docs/design/resharding.md).
if redis.call('HEXISTS', KEYS[1], 'm') == 1 then
  return redis.error_reply('MOVING the player is being moved to another node')
end
local command = ARGV[1]
if command ~= 'HGET' and command ~= 'HMGET' and command ~= 'HGETALL' then
  return redis.error_reply('ERR look.lua reads with HGET, HMGET or HGETALL only')
end
local replies = {}
for i = 2, #KEYS do
  if command == 'HGETALL' then
    replies[#replies + 1] = redis.call(command, KEYS[i])
  else
    replies[#replies + 1] = redis.call(command, KEYS[i], unpack(ARGV, 2))
  end
end
return replies
