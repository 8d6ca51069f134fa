-- handoff_wait: a worker process with room for more sessions registers as waiting to be handed
-- them directly, with its room, until a deadline on Redis's clock. Its BLPOP on the handed list
-- follows in the same pipeline; the next round trip renews the registration, so it stays live
-- between them.
--
-- KEYS[1] idle       the queue's waiting processes "<host:pid>#<room>", scored by deadline (ms)
-- ARGV[1] live_ms    how long the registration lasts unless renewed
-- ARGV[2] waiter     "<host:pid>#<room>"
-- ARGV[3] previous   the process's previous registration, replaced (or '')
--
-- Returns 1.
local t = redis.call('TIME')
if ARGV[3] ~= '' and ARGV[3] ~= ARGV[2] then redis.call('ZREM', KEYS[1], ARGV[3]) end
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1]), ARGV[2])
return 1
