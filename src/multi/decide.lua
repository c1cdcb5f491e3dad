-- Aborts one attempt of a multi-player transaction unless it is decided, or reads its
-- decision: the first decision written wins. Only the commit script (the transaction
-- script's commit mode, on the primary) writes a commit; this script writes aborts, for
-- resolvers of an intent left behind and for a coordinator settling its own earlier attempt.
-- KEYS[1] {primary}:decision:<attempt> (hash)  KEYS[2] {primary}:meta
-- ARGV[1] 'A' (abort) or 'R' (read the decision, writing none)
-- ARGV[2] how long an abort record is kept, in ms (a commit record is kept until forgotten)
-- The record: d the decision; for a commit also p the participants (and, when an earlier
-- version wrote it, r their packed replies).
-- A decision found already written is written again as it is, so that a WAIT after this call
-- covers it: whoever acts on a decision it did not write itself (the coordinator after a
-- lost answer, a reader, a resolver) acts only on one known to be replicated.
-- Reply: the decision the record holds afterwards (this call's, or the one written before);
-- nil for a read ('R') that found none (nothing written).
-- While a slot move has the primary parked (its meta holds the tombstone m), its decision
-- records are parked with it: a record absent here proves nothing, so nothing is read or
-- written (the error MOVING; the caller retries once the move restored the primary).
if redis.call('HEXISTS', KEYS[2], 'm') == 1 then
  return redis.error_reply('MOVING the player is being moved to another node')
end
local held = redis.call('HGET', KEYS[1], 'd')
if held then
  redis.call('HSET', KEYS[1], 'd', held)
  return held
end
if ARGV[1] == 'R' then return nil end
redis.call('HSET', KEYS[1], 'd', 'A')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 'A'
