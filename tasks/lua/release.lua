-- release: give the lease up with work still queued (a worker's warm shutdown), so another worker
-- can take the session at once.
--
-- KEYS[1] lease
-- KEYS[2] fifo
-- KEYS[3] meta
-- KEYS[4] msgs
-- ARGV[1] token
-- ARGV[2] default_ttl  the session's retention unless it has its own ('0' keeps it)
--
-- Returns the number of jobs left queued, or -1 if the lease was not the caller's (nothing changed).
--#include lib/session.lua
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
local queued = redis.call('LLEN', KEYS[2])
if queued == 0 then rest_session(KEYS[3], KEYS[4], ARGV[2]) end
return queued
