-- submit: put a job at the tail of its session's FIFO, making the session on first use.
--
-- KEYS[1] job       the job's record (hash), written here
-- KEYS[2] fifo      the session's queued and running job IDs
-- KEYS[3] lease     the session's lease (only read)
-- KEYS[4] meta      the session's hash
-- KEYS[5] msgs      the session's history (only its retention changes: kept while work is queued)
-- ARGV[1] job_id
-- ARGV[2] on_busy   'enqueue', or 'reject' to refuse when the FIFO is not empty
-- ARGV[3] now       ISO time: the session's created_at if it is new
-- ARGV[4] ttl       the session's own retention in seconds ('0' keeps it), or '' to leave it as it is
-- ARGV[5..] fields  the job record: field, value, field, value...
--
-- Returns 'existing' (a job with this ID exists: an idempotent resubmission; nothing written),
-- 'busy' (on_busy is 'reject' and the FIFO is not empty; nothing written), 'queued-behind' (an
-- earlier job's holder or wake-up will reach it), 'held' (alone, but a lease holder will take it
-- before it can release) or 'created' (alone and nobody holds the session: wake it).
--#include lib/session.lua
if redis.call('EXISTS', KEYS[1]) == 1 then return 'existing' end
if ARGV[2] == 'reject' and redis.call('LLEN', KEYS[2]) > 0 then return 'busy' end
ensure_session(KEYS[4], ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[4], 'ttl', ARGV[4]) end
hold_session(KEYS[4], KEYS[5])
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
if redis.call('RPUSH', KEYS[2], ARGV[1]) > 1 then return 'queued-behind' end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'held' end
return 'created'
