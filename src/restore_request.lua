-- Asks the archiver for restores: adds each request to one restore queue unless it is already
-- waiting there, and only while the queue is shorter than its cap.
-- KEYS[1] colony:{<slot tag>}:restores  zset of restore requests (f:<id> or p:<id>) by request time ms
-- ARGV[1] most requests the queue may hold, ARGV[2..] the requests
-- Reply: { added, already waiting, refused because the queue is full }
local cap = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local size = redis.call('ZCARD', KEYS[1])
local added, waiting, refused = 0, 0, 0
for i = 2, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    waiting = waiting + 1
  elseif size >= cap then
    refused = refused + 1
  else
    redis.call('ZADD', KEYS[1], now, ARGV[i])
    size = size + 1
    added = added + 1
  end
end
return { added, waiting, refused }
