-- Renews one run's lease on a slot's move, on the source master: every step of the move
-- calls it first, so a run paused past its lease never acts after another run took over.
-- KEYS[1] colony:{<slot tag>}:move  ARGV[1] run id  ARGV[2] lease ms
-- ARGV[3] a journal field to add to ('' for none)  ARGV[4] how much
-- Reply: the lease's new end (ms); the error FENCED when the journal names another run or
-- the lease passed (nothing written).
local j = redis.call('HMGET', KEYS[1], 'run', 'lease')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if j[1] ~= ARGV[1] then
  return redis.error_reply('FENCED the move is held by run ' .. tostring(j[1] or 'none'))
end
if tonumber(j[2]) <= now then
  return redis.error_reply('FENCED this run\'s lease passed ' .. (now - tonumber(j[2])) .. ' ms ago')
end
local lease = now + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'lease', lease)
if ARGV[3] ~= '' then redis.call('HINCRBY', KEYS[1], ARGV[3], ARGV[4]) end
return lease
