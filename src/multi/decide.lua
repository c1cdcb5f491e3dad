-- Decides one attempt of a multi-player transaction, once: the first decision written wins.
-- KEYS[1] {primary}:decision:<attempt> (hash)  KEYS[2] colony:{<slot tag>}:decisions
-- ARGV[1] 'C' (commit) or 'A' (abort)
-- ARGV[2] how long an abort record is kept, in ms (a commit record is kept until forgotten)
-- ARGV[3] (commit) the participants, each '<length>:<player id>'
-- ARGV[4..] (commit) every participant's packed reply, in order
-- The record: d the decision (set only with HSETNX, so commit and abort never both win);
-- for a commit also p the participants and r their packed replies (the primary's apply
-- records the transaction's key with them, whoever applies it).
-- Reply: the decision the record holds afterwards (this call's, or the one written before).
if redis.call('HSETNX', KEYS[1], 'd', ARGV[1]) == 1 then
  if ARGV[1] == 'C' then
    local replies = {}
    for k = 4, #ARGV do replies[#replies + 1] = ARGV[k] end
    redis.call('HSET', KEYS[1], 'p', ARGV[3] or '', 'r', cmsgpack.pack(replies))
    local t = redis.call('TIME')
    redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
      KEYS[1])
  else
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
end
return redis.call('HGET', KEYS[1], 'd')
