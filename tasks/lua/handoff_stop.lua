-- handoff_stop: a worker process's warm shutdown. Deregister its waiters and wake its listener with
-- a stop in the process's own list (the listener waits on it as well as on the handed list).
--
-- KEYS[1] idle
-- KEYS[2] stop       the process's stop list
-- ARGV[1..] waiters  its registered waiters
--
-- Returns the number of waiters deregistered.
for _, waiter in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], waiter)
end
redis.call('RPUSH', KEYS[2], '-')
redis.call('PEXPIRE', KEYS[2], 60000)
return #ARGV
