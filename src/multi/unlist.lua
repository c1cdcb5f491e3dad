-- Drops a player from its slot's intents set while it holds no intent: the sweep's cleanup of
-- an entry whose intent was finished before the sweep looked. Checked and dropped in one
-- script, because an intent staged again between the sweep's look and its drop must keep its
-- entry: a plain ZREM would drop the new intent's, and no sweep would find that intent
-- again (only whoever meets it).
-- KEYS[1] {id}:meta  KEYS[2] {id}:intent  KEYS[3] colony:{<slot tag>}:intents
-- ARGV[1] the player id
-- Reply: 1 dropped, 0 not listed, or kept (an intent is held again). While a slot move has
-- the player parked (meta m): the error MOVING, nothing written.
if redis.call('HEXISTS', KEYS[1], 'm') == 1 then
  return redis.error_reply('MOVING the player is being moved to another node')
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
return redis.call('ZREM', KEYS[3], ARGV[1])
