-- follow: a reader starts following a job's events. The worker running a job streams its provider
-- calls only once somebody follows it (CHATQ_STREAM=auto: from the next call), and writes a streamed
-- call's text as it comes only while somebody does (CHATQ_STREAM_TEXT=followed); until then the text
-- goes to the job's commit, which writes it in the same step as the terminal event. A queued job is
-- marked, and its take reads the mark; a running one is marked and every worker process is told,
-- the first time only. A submit with stream=True writes the same mark with the job.
--
-- KEYS[1] job
-- ARGV[1] job_id
-- ARGV[2] channel  the fleet's follow channel, told "<job ID>" when the job is running
--
-- Returns the job's status, or false if there is no such record.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if (status == 'queued' or status == 'running') and redis.call('HSETNX', KEYS[1], 'followed', '1') == 1
    and status == 'running' then
  redis.call('PUBLISH', ARGV[2], ARGV[1])
end
return status
