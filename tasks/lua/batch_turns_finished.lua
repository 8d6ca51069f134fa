-- batch_turns_finished: count turns of a batch as finished and set its keys' expiry again: the
-- result TTL after the last turn, else the idle bound (see tasks/batch_expiry.py).
--
-- KEYS[1] batch           the batch's hash (its 'unfinished' count)
-- KEYS[2] conversations   the batch's conversation list
-- ARGV[1] turns           how many finished
-- ARGV[2] now             ISO time: finished_at if these were the last
-- ARGV[3] result_ttl
-- ARGV[4] unfinished_ttl  result_ttl + the idle bound
--
-- Returns the turns left, or -1 if the batch record is gone (nothing written).
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local left = redis.call('HINCRBY', KEYS[1], 'unfinished', -tonumber(ARGV[1]))
local ttl = ARGV[4]
if left <= 0 then
  redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[2])
  ttl = ARGV[3]
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return left
