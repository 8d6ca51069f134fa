-- create: get or create a session (racing creators make one), optionally setting its retention.
--
-- KEYS[1] meta
-- KEYS[2] msgs
-- KEYS[3] fifo          only read: an idle session's retention starts now
-- ARGV[1] now           ISO time: created_at if it is new
-- ARGV[2] ttl           its own retention in seconds ('0' keeps it), or '' to leave it as it is
-- ARGV[3] default_ttl   the retention unless it has its own ('0' keeps it)
--
-- Returns {'created' or 'exists', created_at}.
--#include lib/session.lua
local created = ensure_session(KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'ttl', ARGV[2]) end
if redis.call('LLEN', KEYS[3]) == 0 then rest_session(KEYS[1], KEYS[2], ARGV[3]) end
return {created and 'created' or 'exists', redis.call('HGET', KEYS[1], 'created_at')}
