-- Stopping jobs, shared by cancel and by a submit that interrupts its session (needs
-- lib/events.lua spliced in before it).

-- A running job is marked with how to stop ('keep' or 'rollback') and every worker process told
-- its ID; the one running it ends it, or the job's next take does if that worker died.
local function ask_stop(job, job_id, mode, stop_channel)
  redis.call('HSET', job, 'cancel', mode)
  redis.call('PUBLISH', stop_channel, job_id .. ' ' .. mode)
end

-- A queued job leaves its session's FIFO, finished 'cancelled'.
local function cancel_queued(job, fifo, events, job_id, now, result_ttl, done_channel, maxlen)
  redis.call('LREM', fifo, 0, job_id)
  redis.call('HSET', job, 'status', 'cancelled', 'finished_at', now)
  redis.call('EXPIRE', job, result_ttl)
  emit_finished(job, events, maxlen, 'cancelled', result_ttl)
  redis.call('PUBLISH', done_channel, 'cancelled')
end
