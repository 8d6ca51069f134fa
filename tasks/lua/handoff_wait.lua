-- handoff_wait: a worker process with room for more sessions registers one waiter per free slot, to
-- be handed sessions directly, until a deadline on Redis's clock. Its BLPOP on the handed list
-- follows in the same pipeline.
--
-- KEYS[1] idle       the queue's waiters, scored by deadline (ms)
-- ARGV[1] wait_ms
-- ARGV[2..] waiters  the process's free slots, one member each (host:pid#slot)
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], deadline, ARGV[i])
end
return #ARGV - 1
