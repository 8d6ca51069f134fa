-- handoff_settle: right after a waiting thread's BLPOP (same pipeline), deregister it; and if more
-- sessions wait in the handed list than live threads wait for them (one was handed while a thread
-- that was counted was already leaving), take one, so none stays there unseen.
--
-- KEYS[1] idle
-- KEYS[2] handed   the queue's handed sessions
-- ARGV[1] waiter
--
-- Returns a handed item or nil.
--#include lib/idle.lua
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('LLEN', KEYS[2]) > live_waiters(KEYS[1]) then return redis.call('LPOP', KEYS[2]) end
return false
