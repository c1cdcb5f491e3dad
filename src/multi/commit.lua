-- Commits one attempt of a multi-player transaction on its primary and applies the primary's
-- intent, in one script: the decision and the primary's apply are one atomic write, so a
-- commit record written here never stands beside an unapplied primary (Percolator's primary
-- commit). Loaded behind window.lua and finish.lua. docs/design/trades.md, step 2.
--
-- KEYS[1..9] as apply.lua's, for the primary (KEYS[9] the decision record
-- {primary}:decision:<attempt>)  KEYS[10] colony:{<slot tag>}:decisions
-- ARGV[1] the primary's id  ARGV[2] attempt  ARGV[3] '1' when writes are recorded in KEYS[6]
-- ARGV[4] window age ms  ARGV[5] window length  ARGV[6] client TTL ms
-- ARGV[7] how long an abort record is kept, in ms
-- ARGV[8] the participants, each '<length>:<player id>'
-- ARGV[9..n] every participant's packed reply, in order
--
-- A commit is written only while the primary holds this attempt's intent and its lease has
-- not passed (by this server's clock); otherwise the attempt aborts (written 'A', kept
-- ARGV[7] ms). A decision found already written (the first decision wins) is written again
-- as it is, so a WAIT after this call covers it; a commit found is applied to the primary
-- here too (ALREADY when it was). The record holds d and, for a commit, p (the sweeper reads
-- the participants); not r: whoever meets the primary finds it applied.
-- Reply: { decision held, the primary's finish (APPLIED / ALREADY / NO_INTENT) for a commit }.
-- While a slot move has the primary parked (meta m), nothing is read or written: the error
-- MOVING.
local record, decisions, meta, intent = KEYS[9], KEYS[10], KEYS[1], KEYS[4]
local player, attempt = ARGV[1], ARGV[2]
if redis.call('HEXISTS', meta, 'm') == 1 then
  return redis.error_reply('MOVING the player is being moved to another node')
end
local function apply_primary(replies)
  return finish_participant(KEYS, player, attempt, 'c', ARGV[3], ARGV[4], ARGV[5], ARGV[6],
    replies)
end
local held = redis.call('HGET', record, 'd')
if held then
  redis.call('HSET', record, 'd', held)
  if held == 'C' then return { held, apply_primary(nil) } end
  return { held }
end
local now = server_now()
local lease = tonumber(redis.call('HGET', intent, 'l') or '0')
if redis.call('HGET', meta, 'x') ~= attempt or lease <= now then
  redis.call('HSET', record, 'd', 'A')
  redis.call('PEXPIRE', record, ARGV[7])
  return { 'A' }
end
redis.call('HSET', record, 'd', 'C', 'p', ARGV[8])
redis.call('ZADD', decisions, now, record)
local replies = {}
for k = 9, #ARGV do replies[#replies + 1] = ARGV[k] end
return { 'C', apply_primary(cmsgpack.pack(replies)) }
