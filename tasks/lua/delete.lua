-- delete: erase an idle session's hash and history.
--
-- KEYS[1] meta
-- KEYS[2] msgs
-- KEYS[3] fifo   only read: a session with work queued or running is not deleted
--
-- Returns {'deleted', created_at or ''}, {'unknown'} or {'busy'} (nothing deleted).
if redis.call('LLEN', KEYS[3]) > 0 then return {'busy'} end
local created = redis.call('HGET', KEYS[1], 'created_at')
if redis.call('DEL', KEYS[1], KEYS[2]) == 0 then return {'unknown'} end
return {'deleted', created or ''}
