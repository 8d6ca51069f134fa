-- handoff_stop: a worker process's warm shutdown. Deregister its waiting threads and wake each
-- with a stop in the process's own list (each thread waits on it as well as on the handed list).
--
-- KEYS[1] idle
-- KEYS[2] stop       the process's stop list
-- ARGV[1..] waiters  its waiting threads
--
-- Returns the number of threads woken.
for _, waiter in ipairs(ARGV) do
  redis.call('ZREM', KEYS[1], waiter)
  redis.call('RPUSH', KEYS[2], '-')
end
redis.call('PEXPIRE', KEYS[2], 60000)
return #ARGV
