-- batch_mark_finished: a read saw every turn of a batch finished: record when (the first time
-- only) and start the result TTL.
--
-- KEYS[1] batch
-- KEYS[2] conversations
-- ARGV[1] now          ISO time
-- ARGV[2] result_ttl
--
-- Returns finished_at, or nil if the batch record expired.
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return redis.call('HGET', KEYS[1], 'finished_at')
