-- renew: extend a held lease (the process's heartbeat calls it for each lease it holds).
--
-- KEYS[1] lease
-- ARGV[1] token
-- ARGV[2] lease_ms
--
-- Returns 1 if extended, 0 if the lease is not the caller's any more.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
