-- Parks players of a moving slot, on the source master (docs/design/resharding.md, step 3):
-- every key of each player is dumped with its expiry into the parked copies and deleted, and
-- each player's meta is left holding only the tombstone m, which every Colony script refuses
-- with MOVING. The parked copies stay the authority until the move's close is confirmed.
-- KEYS[1] colony:{<slot tag>}:move  KEYS[2] colony:{<slot tag>}:parked
-- KEYS[3 .. 2+n] the players' keys to park; KEYS[3+n ..] every player's {id}:meta, which
--   takes the tombstone (written even where the player had none, unless the node refuses)
-- ARGV[1] run id  ARGV[2] generation  ARGV[3] n
-- Reply: keys parked now. A meta already holding a tombstone is not dumped (its real copy is
-- parked already). Errors: FENCED (another run, or the lease passed; nothing written).
local j = redis.call('HMGET', KEYS[1], 'run', 'lease')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if j[1] ~= ARGV[1] or tonumber(j[2]) <= now then
  return redis.error_reply('FENCED this run no longer holds the move')
end
local n = tonumber(ARGV[3])
local metas, tombstoned = {}, {}
for i = 3 + n, #KEYS do
  metas[KEYS[i]] = true
  if redis.call('HEXISTS', KEYS[i], 'm') == 1 then tombstoned[KEYS[i]] = true end
end
-- First the copies: a failure past this point leaves the players whole on S.
local parked = 0
local taken = {}
for i = 3, 2 + n do
  local key = KEYS[i]
  if not tombstoned[key] then
    local ttl = redis.call('PTTL', key)
    if ttl ~= -2 then
      local expiry = 0
      if ttl >= 0 then expiry = now + ttl end
      redis.call('HSET', KEYS[2], key, expiry .. ':' .. redis.call('DUMP', key))
      taken[#taken + 1] = key
      parked = parked + 1
    end
  end
end
-- Then the tombstones, before anything is deleted. A meta the node does not hold cannot be
-- written while the slot is MIGRATING ("non local key"): such a player (keys without a
-- meta) is refused by Redis itself then (TRYAGAIN: its scripts' keys are partly here).
for i = 3 + n, #KEYS do
  local meta = KEYS[i]
  local had = redis.call('EXISTS', meta) == 1
  local written = redis.pcall('HSET', meta, 'm', ARGV[2])
  if type(written) ~= 'table' or not written.err then
    -- A meta the player did not have is parked as '-': a restore or an abort deletes it.
    if not had and not tombstoned[meta] then redis.call('HSETNX', KEYS[2], meta, '-') end
    local fields = redis.call('HKEYS', meta)
    local drop = {}
    for _, f in ipairs(fields) do
      if f ~= 'm' then drop[#drop + 1] = f end
      if #drop == 1000 then
        redis.call('HDEL', meta, unpack(drop))
        drop = {}
      end
    end
    if #drop > 0 then redis.call('HDEL', meta, unpack(drop)) end
  end
end
-- Last, the keys themselves. A meta is emptied above, never deleted: while the slot is
-- MIGRATING, a key deleted could not be written again.
for _, key in ipairs(taken) do
  if not metas[key] then redis.call('DEL', key) end
end
redis.call('HINCRBY', KEYS[1], 'parked', parked)
return parked
