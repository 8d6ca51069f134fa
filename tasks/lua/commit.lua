-- commit: finish the running head job in one step, fenced by the lease token: append its turn to
-- the history, add its usage to the session, store its result, pop it and announce it. A worker
-- that lost its lease can never append; with the FIFO now empty the lease goes too.
--
-- KEYS[1] job
-- KEYS[2] fifo
-- KEYS[3] lease
-- KEYS[4] meta
-- KEYS[5] msgs
-- KEYS[6] ck                 the job's checkpoint, deleted
-- KEYS[7] events             the job's event log: gets the terminal event
-- ARGV[1] token
-- ARGV[2] job_id
-- ARGV[3] now                ISO time
-- ARGV[4] result_ttl         seconds the finished record stays readable
-- ARGV[5] status             'succeeded', 'failed' or 'cancelled'
-- ARGV[6] result             JobResult JSON, or ''
-- ARGV[7] error              JobError JSON, or ''
-- ARGV[8] prompt_tokens
-- ARGV[9] completion_tokens
-- ARGV[10] total_tokens
-- ARGV[11] model             or ''
-- ARGV[12] channel           the job's done channel
-- ARGV[13] default_ttl       the session's retention unless it has its own ('0' keeps it)
-- ARGV[14] maxlen            entries the event log is trimmed to (about)
-- ARGV[15] keep              '' or how many messages of the history to keep before appending (a
--                            regenerated reply replaces what followed its user message)
-- ARGV[16] n                 how many events of the run still to append before the terminal one
-- ARGV[17..] events, messages  those n events (type, data JSON, ...), then the turn's messages, JSON each
--
-- Returns {'ok', next_job_id} (the lease holder goes on with that head), {'released'} (the FIFO is
-- empty: the lease went with the commit), or why it refused, changing nothing: {'lost'} (not the
-- lease holder), {'moved'} (not the head), {'not-running'}.
--#include lib/session.lua
--#include lib/events.lua
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return {'lost'} end
if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[2] then return {'moved'} end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return {'not-running'} end
local first = 17 + 2 * tonumber(ARGV[16])
if ARGV[15] == '0' then redis.call('DEL', KEYS[5])
elseif ARGV[15] ~= '' then redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[15]) - 1) end
if #ARGV >= first then redis.call('RPUSH', KEYS[5], unpack(ARGV, first)) end
redis.call('HSET', KEYS[4], 'updated_at', ARGV[3])
redis.call('HINCRBY', KEYS[4], 'prompt_tokens', ARGV[8])
redis.call('HINCRBY', KEYS[4], 'completion_tokens', ARGV[9])
redis.call('HINCRBY', KEYS[4], 'total_tokens', ARGV[10])
if ARGV[11] ~= '' then redis.call('HSET', KEYS[4], 'model', ARGV[11]) end
redis.call('HSET', KEYS[1], 'status', ARGV[5], 'finished_at', ARGV[3])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[7]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('DEL', KEYS[6])
for i = 17, first - 1, 2 do emit_event(KEYS[7], ARGV[14], ARGV[i], ARGV[i + 1]) end
emit_finished(KEYS[1], KEYS[7], ARGV[14], ARGV[5], ARGV[4])
redis.call('LPOP', KEYS[2])
redis.call('PUBLISH', ARGV[12], ARGV[5])
local next_job = redis.call('LINDEX', KEYS[2], 0)
if next_job then return {'ok', next_job} end
redis.call('DEL', KEYS[3])
rest_session(KEYS[4], KEYS[5], ARGV[13])
return {'released'}
