-- Shared by restore.lua and rebuild.lua, which are loaded with this text in front of them.
-- Both take KEYS[1] {id}:meta, KEYS[2] {id}:pub, KEYS[3] {id}:priv,
-- KEYS[4] colony:{<slot tag>}:active, KEYS[5] {id}:clients and
-- ARGV[1] player id, ARGV[2] version, ARGV[3] mode, ARGV[4] number of public pairs n,
-- ARGV[5] number of client floors k, then n public (field, value) pairs, then the private
-- pairs, then k (client, floor, last write ms) triples.

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
local nclients = tonumber(ARGV[5])
local first_private = 6 + 2 * npub
local last_private = #ARGV - 3 * nclients

-- Each client's floor back as a window with nothing remembered, unless the client already
-- has a window (it is newer than the document).
local function put_back_floors()
  for i = last_private + 1, #ARGV, 3 do
    local client, floor, last = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if redis.call('HSETNX', KEYS[1], 'c:' .. client, floor .. ' ' .. last .. ' 0') == 1 then
      redis.call('ZADD', KEYS[5], 'NX', last, client)
    end
  end
end
