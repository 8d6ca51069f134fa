-- submit: put a job at the tail of its session's FIFO, making the session on first use; with
-- on_busy 'interrupt' or 'rollback', first stop the jobs the FIFO holds (the running one is asked
-- to stop, 'keep' or 'rollback'; queued ones are cancelled), so the new message runs next.
--
-- KEYS[1] job       the job's record (hash), written here
-- KEYS[2] fifo      the session's queued and running job IDs
-- KEYS[3] lease     the session's lease (only read)
-- KEYS[4] meta      the session's hash
-- KEYS[5] msgs      the session's history (only its retention changes: kept while work is queued)
-- KEYS[6..] stopped with 'interrupt' or 'rollback': record, event log of each job the caller read
--                   from the FIFO (ARGV[12..]), in FIFO order
-- then, only when ARGV[11] is not '' (a standalone Redis that is also the broker; see below):
--   idle     the fleet's processes waiting for hand-offs (lib/idle.lua)
--   handed   sessions handed to them and not yet taken
--   queue    the Celery queue's list, as kombu's Redis transport keeps it
-- ARGV[1] job_id
-- ARGV[2] on_busy   'enqueue'; 'reject' to refuse when the FIFO is not empty; 'interrupt' or
--                   'rollback' to stop what it holds first
-- ARGV[3] now       ISO time: the session's created_at if it is new
-- ARGV[4] ttl       the session's own retention in seconds ('0' keeps it), or '' to leave it as it is
-- ARGV[5] result_ttl    seconds a cancelled job's record stays readable
-- ARGV[6] maxlen        entries an event log is trimmed to (about)
-- ARGV[7] done_prefix   the done channels' prefix (the job ID follows)
-- ARGV[8] stop_channel  the fleet's cancel channel
-- ARGV[9] n             how many job IDs the caller read from the FIFO (0 unless interrupting)
-- ARGV[10] item         the hand-off: "<namespace> <session_id> <job_id>" (with ARGV[11])
-- ARGV[11] wake         the session's Celery wake-up message, or '' to leave waking to the caller
-- ARGV[12..] ids, fields  those n job IDs, then the job record: field, value, field, value...
--
-- Returns {outcome, the IDs of the queued jobs it cancelled...}; outcome is 'existing' (a job with
-- this ID exists: an idempotent resubmission; nothing written), 'busy' (on_busy is 'reject' and the
-- FIFO is not empty; nothing written), 'stale' (interrupting, the FIFO no longer holds the IDs
-- read: nothing written, read again), 'queued-behind' (an earlier job's holder or wake-up will reach
-- it), 'held' (alone, but a lease holder will take it before it can release) or 'created' (alone
-- and nobody holds the session: wake it).
--
-- Given a wake-up (ARGV[11]), a 'created' session is woken here instead, in the submit's own
-- round trip: handed to a waiting process with room ('handed', as handoff_give does) or its message
-- pushed to the Celery queue ('woken'). The fleet's keys and the broker's queue are in other hash
-- slots than the session's, so this is for a standalone Redis only; on a cluster the caller wakes.
--#include lib/session.lua
--#include lib/events.lua
--#include lib/stop.lua
--#include lib/idle.lua
if redis.call('EXISTS', KEYS[1]) == 1 then return {'existing'} end
if ARGV[2] == 'reject' and redis.call('LLEN', KEYS[2]) > 0 then return {'busy'} end
local n = tonumber(ARGV[9])
local out = {''}
if ARGV[2] == 'interrupt' or ARGV[2] == 'rollback' then
  local ids = redis.call('LRANGE', KEYS[2], 0, -1)
  if #ids ~= n or #KEYS < 5 + 2 * n then return {'stale'} end
  for i = 6, 5 + 2 * n, 2 do
    if ids[i / 2 - 2] ~= ARGV[i / 2 + 9] then return {'stale'} end
  end
  local mode = ARGV[2] == 'rollback' and 'rollback' or 'keep'
  for i = 6, 5 + 2 * n, 2 do
    local id = ARGV[i / 2 + 9]
    local status = redis.call('HGET', KEYS[i], 'status')
    if status == 'running' then
      ask_stop(KEYS[i], id, mode, ARGV[8])
    elseif status == 'queued' then
      cancel_queued(KEYS[i], KEYS[2], KEYS[i + 1], id, ARGV[3], ARGV[5], ARGV[7] .. id, ARGV[6])
      out[#out + 1] = id
    end
  end
end
ensure_session(KEYS[4], ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], 'ttl', ARGV[4]) end
hold_session(KEYS[4], KEYS[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 12 + n))
if redis.call('RPUSH', KEYS[2], ARGV[1]) > 1 then out[1] = 'queued-behind'
elseif redis.call('EXISTS', KEYS[3]) == 1 then out[1] = 'held'
elseif ARGV[11] == '' then out[1] = 'created'
else
  local idle, handed, queue = KEYS[6 + 2 * n], KEYS[7 + 2 * n], KEYS[8 + 2 * n]
  if live_room(idle) > redis.call('LLEN', handed) then
    redis.call('RPUSH', handed, ARGV[10])
    redis.call('PEXPIRE', handed, 60000)
    out[1] = 'handed'
  else
    redis.call('LPUSH', queue, ARGV[11])
    out[1] = 'woken'
  end
end
return out
