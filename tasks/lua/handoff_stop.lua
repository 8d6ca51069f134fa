-- handoff_stop: a worker process stops waiting for hand-offs (it is full, or shutting down).
-- Deregister its waiters; on warm shutdown also wake its listener with a stop in the process's own
-- list (the listener waits on it as well as on the handed list).
--
-- KEYS[1] idle
-- KEYS[2] stop       the process's stop list
-- ARGV[1] wake       '1' to wake the listener, '0' not to
-- ARGV[2..] waiters  its registration(s)
--
-- Returns the number of waiters deregistered.
local removed = 0
for i = 2, #ARGV do
  removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
end
if ARGV[1] == '1' then
  redis.call('RPUSH', KEYS[2], '-')
  redis.call('PEXPIRE', KEYS[2], 60000)
end
return removed
