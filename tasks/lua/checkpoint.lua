-- checkpoint: save a running job's finished steps, only while the caller holds the lease.
--
-- KEYS[1] lease
-- KEYS[2] ck     the job's checkpoint
-- ARGV[1] token
-- ARGV[2] value  Checkpoint JSON
--
-- Returns 1 if saved, 0 if the lease is not the caller's (nothing saved).
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
