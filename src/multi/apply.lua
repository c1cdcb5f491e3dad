-- Applies (a commit) or rolls back (an abort) one participant of a multi-player transaction.
-- Loaded behind window.lua and finish.lua (finish_participant, which says what it does and
-- answers). docs/design/trades.md has the protocol.
--
-- KEYS[1] {id}:meta  KEYS[2] {id}:pub  KEYS[3] {id}:priv  KEYS[4] {id}:intent
-- KEYS[5] colony:{<slot tag>}:active  KEYS[6] colony:{<slot tag>}:dirty
-- KEYS[7] {id}:clients  KEYS[8] colony:{<slot tag>}:intents
-- KEYS[9] the attempt's decision record when this player is the primary (same slot), else
--         KEYS[1] again
-- ARGV[1] player id  ARGV[2] attempt  ARGV[3] 'c' apply (committed) or 'a' roll back
-- ARGV[4] '1' when writes are recorded in KEYS[6] for checkpoints
-- ARGV[5] window age ms  ARGV[6] window length  ARGV[7] client TTL ms
return finish_participant(KEYS, ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7],
  nil)
