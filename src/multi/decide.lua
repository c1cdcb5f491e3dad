-- Decides one attempt of a multi-player transaction, once: the first value written wins.
-- KEYS[1] {primary}:decision:<attempt>  KEYS[2] colony:{<slot tag>}:decisions
-- ARGV[1] 'C' followed by the participants (each '<length>:<player id>'), or 'A'
-- ARGV[2] how long an abort record is kept, in ms (a commit record is kept until forgotten)
-- Reply: the decision the key holds afterwards (this call's, or the one written before).
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  if string.sub(ARGV[1], 1, 1) == 'C' then
    local t = redis.call('TIME')
    redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000),
      KEYS[1])
  else
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
end
return redis.call('GET', KEYS[1])
