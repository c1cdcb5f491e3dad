-- Judges a trade's key in its primary's window, when another participant refused in step 1
-- (docs/design/trades.md): a key applied before answers its replay, which wins over every
-- other participant's refusal; the primary stages nothing and gets no lease (its operations
-- run in the commit script, step 2, which judges the key again). Loaded behind window.lua.
--
-- KEYS[1] {primary}:meta  KEYS[2] {primary}:intent  KEYS[3] {primary}:clients
-- ARGV[1] the attempt  ARGV[2] the key's client id  ARGV[3] its request id
-- ARGV[4] the transaction's fingerprint (40 hex digits)  ARGV[5] client TTL ms
-- ARGV[6] most clients a player keeps windows for
--
-- Reply, in the transaction script's shapes: 'NEW' for a key this primary has not applied,
-- its version (else its last trade's mark) written again as it is, so that a WAIT after this
-- call covers the window it was judged by: the answer lets another participant's refusal be
-- final, so it must come from a master whose state its replicas hold (a master woken after
-- its failover cannot acknowledge it; the refusals below write the same); a key remembered:
-- { 'REPLAY', version, 1, 0, then the stored reply of every participant }, or
-- IDEMPOTENCY_MISMATCH, its record written again as it is either way (so a WAIT after this
-- call covers it); a key at or below the client's floor: REQUEST_TOO_OLD; a
-- client new to a primary that keeps windows for ARGV[6] clients already: TOO_LARGE_CLIENTS
-- (judged as the transaction script judges them, stale clients forgotten first); the
-- primary holding another attempt's intent: { 'LOCKED', version, 0, 0, attempt, primary,
-- expired (0/1) }, as a prepare answers, so the coordinator resolves it the same way (a key
-- judged on a locked player could be applied by the intent's commit right after); an
-- archived primary (meta a): { 'ARCHIVED', version, 0, 0 }, as the commit answers — its
-- windows went with it, so the key cannot be judged here until it is restored. While a slot
-- move has the player parked (meta m): the error MOVING, nothing written.
local meta, intent = KEYS[1], KEYS[2]
local attempt, client, request = ARGV[1], ARGV[2], ARGV[3]
local record_field = 'r:' .. client .. ':' .. request
local state = redis.call('HMGET', meta, 'v', 'x', 'm', 'c:' .. client, record_field, 'y', 'a')
if state[3] then
  return redis.error_reply('MOVING the player is being moved to another node')
end
local version = tonumber(state[1] or '0')
if state[7] then return { 'ARCHIVED', version, 0, 0 } end
if state[2] and state[2] ~= attempt then
  local info = redis.call('HMGET', intent, 'p', 'l')
  local expired = 0
  if tonumber(info[2] or '0') <= server_now() then expired = 1 end
  return { 'LOCKED', version, 0, 0, state[2], info[1] or '', expired }
end
local verdict, stored = judge_request(meta, KEYS[3], tonumber(ARGV[5]), tonumber(ARGV[6]),
  request, state[4], state[5], version == 0 and not state[6])
-- Every answer but a replay or a mismatch (whose record replay_multi writes again) is judged
-- by the window and decides the trade's answer: the version (else the last trade's mark) is
-- written again as it is, so that the WAIT after this call covers what it was judged by. A
-- player with neither was never written and has no window.
local function judged_by_what_replicas_hold()
  if state[1] then
    redis.call('HSET', meta, 'v', state[1])
  elseif state[6] then
    redis.call('HSET', meta, 'y', state[6])
  end
end
if verdict == 'CLIENTS_FULL' then
  judged_by_what_replicas_hold()
  return { 'TOO_LARGE_CLIENTS', version, 0, 0 }
elseif verdict == 'REQUEST_TOO_OLD' then
  judged_by_what_replicas_hold()
  return { 'REQUEST_TOO_OLD', version, 0, 0 }
elseif verdict == 'REPLAY' then
  return replay_multi(meta, record_field, stored, ARGV[4], version)
end
judged_by_what_replicas_hold()
return 'NEW'
