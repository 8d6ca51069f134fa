-- cancel: take a job that has not started out of its session's FIFO; the later ones go on.
--
-- KEYS[1] job
-- KEYS[2] fifo
-- KEYS[3] meta
-- KEYS[4] msgs
-- ARGV[1] job_id
-- ARGV[2] now          ISO time
-- ARGV[3] result_ttl   seconds the cancelled record stays readable
-- ARGV[4] channel      the job's done channel
-- ARGV[5] default_ttl  the session's retention unless it has its own ('0' keeps it)
--
-- Returns {'cancelled'}, {'unknown'} (no such record) or {'not-queued', status} (it started or
-- finished; nothing changed).
--#include lib/session.lua
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unknown'} end
if status ~= 'queued' then return {'not-queued', status} end
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], 'cancelled')
if redis.call('LLEN', KEYS[2]) == 0 then rest_session(KEYS[3], KEYS[4], ARGV[5]) end
return {'cancelled'}
