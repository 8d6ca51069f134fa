-- handoff_give: hand a session that just got work to a waiting worker process, instead of a Celery
-- wake-up, if the waiting processes have more room than sessions are already handed to them. Redis
-- gives the pushed item to the process that has waited longest.
--
-- KEYS[1] idle
-- KEYS[2] handed
-- ARGV[1] item     "<namespace> <session_id> <job_id>"
--
-- Returns 1 if handed, 0 if nobody waits with room (publish a wake-up).
--#include lib/idle.lua
if live_room(KEYS[1]) <= redis.call('LLEN', KEYS[2]) then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], 60000)
return 1
