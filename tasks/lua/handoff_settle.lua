-- handoff_settle: right after a process's BLPOP (same pipeline), deregister its waiters; and if more
-- sessions wait in the handed list than live waiters wait for them (some were handed while this
-- process's waiters were still counted), take up to the room it has left, so none stays unseen.
--
-- KEYS[1] idle
-- KEYS[2] handed     the queue's handed sessions
-- ARGV[1] room       sessions the process can still take
-- ARGV[2..] waiters  the waiters it registered
--
-- Returns the handed items taken (possibly none).
--#include lib/idle.lua
for i = 2, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
end
local excess = redis.call('LLEN', KEYS[2]) - live_waiters(KEYS[1])
local take = math.min(excess, tonumber(ARGV[1]))
if take <= 0 then return {} end
return redis.call('LPOP', KEYS[2], take)
