-- take: the lease holder's next step. Start the FIFO's head job, or give the lease up with an
-- empty FIFO. With acquire_ms > 0 it first takes the lease if nobody holds it (a worker's first
-- step on a woken session). The caller names the head it expects and passes that job's keys; when
-- the head is another job (or the caller named none) the call only says which, and the caller asks
-- again with that job's keys.
--
-- KEYS[1] fifo
-- KEYS[2] lease
-- KEYS[3] meta
-- KEYS[4] msgs
-- KEYS[5] job              the expected head's record (only when ARGV[3] names one)
-- KEYS[6] ck               the expected head's checkpoint (likewise)
-- KEYS[7] events           the expected head's event log (likewise)
-- ARGV[1] token            the caller's lease token
-- ARGV[2] acquire_ms       lease time to take a free lease for, or '0' (the caller holds it already)
-- ARGV[3] job_id           the head the caller expects, or ''
-- ARGV[4] now              ISO time
-- ARGV[5] max_attempts     runs before a job whose workers keep dying fails
-- ARGV[6] result_ttl       seconds such a failed record stays readable
-- ARGV[7] exhausted_error  its error (JobError JSON)
-- ARGV[8] worker           host:pid, recorded on the job
-- ARGV[9] history_limit    messages of the history's tail to return (0: none)
-- ARGV[10] channel         the expected head's done channel
-- ARGV[11] default_ttl     the session's retention unless it has its own ('0' keeps it), from
--                          when a popped job leaves the FIFO empty
-- ARGV[12] maxlen          entries the event log is trimmed to (about)
--
-- Returns {'lost'} (another worker holds the lease, or the caller's expired), {'released'} (the
-- FIFO is empty: the lease is given up), {'head', job_id} (the head is this other job), {'skip',
-- job_id, next, ''} (the head's record is gone or finished: popped), {'exhausted', job_id, next,
-- batch_id} (failed after max_attempts: popped), where next is the new head or '' and batch_id the
-- job's batch or '', or {'run', job_id,
-- checkpoint or '', session created_at, history length, the session's own system prompt or '', n,
-- the job's n fields and values..., history messages...}.
-- A started job's log gets job.started, or job.restarted from its second run on (its worker died
-- or lost the session mid-run); an exhausted one's gets job.failed.
--#include lib/session.lua
--#include lib/events.lua
local holder = redis.call('GET', KEYS[2])
if holder ~= ARGV[1] then
  if holder or ARGV[2] == '0' then return {'lost'} end
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
end
local head = redis.call('LINDEX', KEYS[1], 0)
if not head then  -- whatever emptied the FIFO started the session's retention
  redis.call('DEL', KEYS[2])
  return {'released'}
end
if head ~= ARGV[3] then return {'head', head} end
local outcome, batch_id
local status = redis.call('HGET', KEYS[5], 'status')
if status ~= 'queued' and status ~= 'running' then
  outcome = 'skip'
elseif redis.call('HINCRBY', KEYS[5], 'attempts', 1) > tonumber(ARGV[5]) then
  outcome = 'exhausted'
  batch_id = redis.call('HGET', KEYS[5], 'batch_id')
  redis.call('HSET', KEYS[5], 'status', 'failed', 'finished_at', ARGV[4], 'error', ARGV[7])
  redis.call('EXPIRE', KEYS[5], ARGV[6])
  redis.call('DEL', KEYS[6])
  emit_finished(KEYS[5], KEYS[7], ARGV[12], 'failed', ARGV[6])
  redis.call('PUBLISH', ARGV[10], 'failed')
end
if outcome then
  redis.call('LPOP', KEYS[1])
  local next_job = redis.call('LINDEX', KEYS[1], 0)
  if not next_job then rest_session(KEYS[3], KEYS[4], ARGV[11]) end
  return {outcome, head, next_job or '', batch_id or ''}
end
ensure_session(KEYS[3], ARGV[4])
redis.call('HSETNX', KEYS[5], 'started_at', ARGV[4])
redis.call('HSET', KEYS[5], 'status', 'running', 'worker', ARGV[8])
local attempt = tonumber(redis.call('HGET', KEYS[5], 'attempts'))
emit_event(KEYS[7], ARGV[12], attempt > 1 and 'job.restarted' or 'job.started',
           cjson.encode({attempt = attempt, worker = ARGV[8]}))
local fields = redis.call('HGETALL', KEYS[5])
local out = {'run', head, redis.call('GET', KEYS[6]) or '', redis.call('HGET', KEYS[3], 'created_at'),
             redis.call('LLEN', KEYS[4]), redis.call('HGET', KEYS[3], 'system_prompt') or '', #fields}
for _, v in ipairs(fields) do table.insert(out, v) end
local limit = tonumber(ARGV[9])
if limit > 0 then
  for _, m in ipairs(redis.call('LRANGE', KEYS[4], -limit, -1)) do table.insert(out, m) end
end
return out
