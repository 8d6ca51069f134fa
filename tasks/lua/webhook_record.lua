-- webhook_record: write a delivery's status only while the job exists, so an expired record is
-- never resurrected without a TTL.
--
-- KEYS[1] job
-- ARGV[1] field
-- ARGV[2] status   JSON
--
-- Returns 1 if written, 0 if the job is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
