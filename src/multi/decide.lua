-- Decides one attempt of a multi-player transaction, once: the first decision written wins.
-- KEYS[1] {primary}:decision:<attempt> (hash)  KEYS[2] colony:{<slot tag>}:decisions
-- KEYS[3] {primary}:meta (the primary's intent mark x)  KEYS[4] {primary}:intent
-- ARGV[1] 'C' (commit), 'A' (abort) or 'R' (read the decision, writing none)
-- ARGV[2] how long an abort record is kept, in ms (a commit record is kept until forgotten)
-- ARGV[3] (commit) the participants, each '<length>:<player id>'
-- ARGV[4..n-1] (commit) every participant's packed reply, in order
-- ARGV[n] (commit) the attempt id, last
-- The record: d the decision (set only with HSETNX, so commit and abort never both win);
-- for a commit also p the participants and r their packed replies (the primary's apply
-- records the transaction's key with them, whoever applies it).
-- A commit is written only while the primary holds this attempt's intent and its lease has
-- not passed (by this server's clock): a primary whose intent is gone (rolled back, or lost
-- in a failover) can never apply, and a coordinator slower than the lease may have been
-- aborted by a resolver whose abort record has since expired; either way the attempt aborts
-- instead.
-- A decision found already written is written again as it is, so that a WAIT after this call
-- covers it: whoever acts on a decision it did not write itself (the coordinator after a
-- race, a reader, a resolver) acts only on one known to be replicated.
-- Reply: the decision the record holds afterwards (this call's, or the one written before);
-- nil for a read ('R') that found none (nothing written).
-- While a slot move has the primary parked (its meta holds the tombstone m), its decision
-- records are parked with it: a record absent here proves nothing, so nothing is read or
-- written (the error MOVING; the caller retries once the move restored the primary).
if redis.call('HEXISTS', KEYS[3], 'm') == 1 then
  return redis.error_reply('MOVING the player is being moved to another node')
end
local held = redis.call('HGET', KEYS[1], 'd')
if held then
  redis.call('HSET', KEYS[1], 'd', held)
  return held
end
if ARGV[1] == 'R' then return nil end
local decision = ARGV[1]
if decision == 'C' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local lease = tonumber(redis.call('HGET', KEYS[4], 'l') or '0')
  if redis.call('HGET', KEYS[3], 'x') ~= ARGV[#ARGV] or lease <= now then
    decision = 'A'
  end
end
redis.call('HSET', KEYS[1], 'd', decision)
if decision == 'C' then
  local replies = {}
  for k = 4, #ARGV - 1 do replies[#replies + 1] = ARGV[k] end
  redis.call('HSET', KEYS[1], 'p', ARGV[3] or '', 'r', cmsgpack.pack(replies))
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
    KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return decision
