-- handoff_wait: a runner thread with nothing to do registers as waiting to be handed a session,
-- until a deadline on Redis's clock. Its BLPOP on the handed list follows in the same pipeline.
--
-- KEYS[1] idle     the queue's waiting threads, scored by deadline (ms)
-- ARGV[1] waiter   host:pid:thread
-- ARGV[2] wait_ms
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
