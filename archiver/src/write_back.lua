-- Shared by restore.lua and rebuild.lua, which are loaded with this text in front of them.
-- Both take KEYS[1] {id}:meta, KEYS[2] {id}:pub, KEYS[3] {id}:priv, KEYS[4] colony:{<slot tag>}:active and
-- ARGV[1] player id, ARGV[2] version, ARGV[3] mode, ARGV[4] number of public pairs n, then n
-- public (field, value) pairs, then the private pairs.

-- HSET ARGV[from..to] into key in slices: Lua's stack holds a few thousand values at most.
local function hset(key, from, to)
  local i = from
  while i <= to do
    local last = math.min(i + 999, to)
    redis.call('HSET', key, unpack(ARGV, i, last))
    i = last + 1
  end
end

local npub = tonumber(ARGV[4])
local first_private = 5 + 2 * npub
