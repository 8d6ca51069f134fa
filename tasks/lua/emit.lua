-- emit: append a running job's events (text deltas, tool calls and results, retries) to its log,
-- fenced by the session's lease: a worker that lost the session writes nothing. Tells the writer
-- whether the job was asked to stop meanwhile, so a lost cancel notice is caught at the next write.
--
-- KEYS[1] lease
-- KEYS[2] job
-- KEYS[3] events
-- ARGV[1] token
-- ARGV[2] maxlen      entries the log is trimmed to (about)
-- ARGV[3..] events    type, data (JSON), type, data...
--
-- Returns {'ok', last_seq, cancel} (cancel: the job's stop mode, or ''), or {'lost'} (not the
-- lease holder, or the job is not running): nothing written.
--#include lib/events.lua
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'lost'} end
local status = redis.call('HGET', KEYS[2], 'status')
if status ~= 'running' then return {'lost'} end
local seq = 0
for i = 3, #ARGV, 2 do seq = emit_event(KEYS[3], ARGV[2], ARGV[i], ARGV[i + 1]) end
return {'ok', seq, redis.call('HGET', KEYS[2], 'cancel') or ''}
