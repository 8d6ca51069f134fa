-- cancel: stop a job. A queued one leaves its session's FIFO at once (the later ones go on); a
-- running one is marked with how to stop, and every worker process is told: the one running it
-- ends it 'cancelled' with its next step (within a second), or, if that worker died, the next
-- take of the job does. A finished job is left as it is.
--
-- KEYS[1] job
-- KEYS[2] fifo
-- KEYS[3] meta
-- KEYS[4] msgs
-- KEYS[5] events
-- ARGV[1] job_id
-- ARGV[2] now          ISO time
-- ARGV[3] result_ttl   seconds the cancelled record stays readable
-- ARGV[4] channel      the job's done channel
-- ARGV[5] default_ttl  the session's retention unless it has its own ('0' keeps it)
-- ARGV[6] maxlen       entries the event log is trimmed to (about)
-- ARGV[7] mode         'keep' (the history keeps the turn so far) or 'rollback' (no trace), if running
-- ARGV[8] stop_channel the fleet's cancel channel, told "<job ID> <mode>" when it is running
--
-- Returns {'cancelled'}, {'requested'} (running: its worker stops it), {'unknown'} (no such
-- record) or {'finished', status} (nothing changed).
--#include lib/session.lua
--#include lib/events.lua
--#include lib/stop.lua
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unknown'} end
if status == 'running' then
  ask_stop(KEYS[1], ARGV[1], ARGV[7], ARGV[8])
  return {'requested'}
end
if status ~= 'queued' then return {'finished', status} end
cancel_queued(KEYS[1], KEYS[2], KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6])
if redis.call('LLEN', KEYS[2]) == 0 then rest_session(KEYS[3], KEYS[4], ARGV[5]) end
return {'cancelled'}
