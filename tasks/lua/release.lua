-- release: give the lease up with work still queued (a worker's warm shutdown), so another worker
-- can take the session at once.
--
-- KEYS[1] lease
-- KEYS[2] fifo    only read
-- ARGV[1] token
--
-- Returns the number of jobs left queued, or -1 if the lease was not the caller's (nothing changed).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
return redis.call('LLEN', KEYS[2])
