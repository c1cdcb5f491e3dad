-- Claims one slot's move for one run of colony-admin, on the slot's source master
-- (docs/design/resharding.md, step 1). The journal and the parked copies are keys of the
-- moving slot, so they live and fail over with the source, and vanish with the slot when the
-- move closes.
-- KEYS[1] colony:{<slot tag>}:move    hash: run, target (node id), lease (ms, this server's
--                                      clock), gen (runs so far), parked, restored (counts)
-- KEYS[2] colony:{<slot tag>}:parked  hash: key name -> '<expiry ms or 0>:<DUMP value>', for
--                                      every key parked so far; field '_' marks it created
-- ARGV[1] run id  ARGV[2] target node id  ARGV[3] lease ms
-- ARGV[4] a target id the journal may name instead of ARGV[2] (the target's old id, when it
--         failed over since), or ''
-- Reply: { generation, target the journal named before ('' for a new move) }; errors:
-- BUSY (another run's lease is live), MISMATCH (a half-done move to another target).
local j = redis.call('HMGET', KEYS[1], 'run', 'lease', 'target', 'gen')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if j[1] and j[1] ~= ARGV[1] and tonumber(j[2]) > now then
  return redis.error_reply('BUSY run ' .. j[1] .. ' holds this move for ' ..
    (tonumber(j[2]) - now) .. ' ms more')
end
if j[3] and j[3] ~= ARGV[2] and j[3] ~= ARGV[4] then
  return redis.error_reply('MISMATCH the slot is half moved to node ' .. j[3] ..
    ': resume or abort that move')
end
local gen = tonumber(j[4] or '0') + 1
redis.call('HSET', KEYS[1], 'run', ARGV[1], 'target', ARGV[2], 'lease', now + tonumber(ARGV[3]),
  'gen', gen)
redis.call('HSETNX', KEYS[2], '_', '')
return { gen, j[3] or '' }
