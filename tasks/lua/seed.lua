-- seed: create a session with a history of its own (a system prompt and earlier messages), or
-- give an existing one that holds nothing (no history, nothing queued) that history. A session with
-- history or work is left as it is: seeding never rewrites a conversation under way.
--
-- KEYS[1] meta
-- KEYS[2] msgs
-- KEYS[3] fifo
-- ARGV[1] now             ISO time: created_at if it is new
-- ARGV[2] ttl             its own retention in seconds ('0' keeps it), or '' to leave it as it is
-- ARGV[3] default_ttl     the retention unless it has its own ('0' keeps it)
-- ARGV[4] system_prompt   the session's own system prompt, or '' for its agent's
-- ARGV[5] origin          the job that seeds it (a fork), or '': a second try of the same job
--                         finds its own seed and counts it made
-- ARGV[6..] messages      the history, JSON each
--
-- Returns {'created' or 'exists', created_at}; 'exists' changed nothing.
--#include lib/session.lua
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then
  local mine = ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'origin') == ARGV[5]
  return {mine and 'created' or 'exists', redis.call('HGET', KEYS[1], 'created_at') or ''}
end
ensure_session(KEYS[1], ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'ttl', ARGV[2]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'system_prompt', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'origin', ARGV[5]) end
if #ARGV > 5 then redis.call('RPUSH', KEYS[2], unpack(ARGV, 6)) end
redis.call('HSET', KEYS[1], 'updated_at', ARGV[1])
rest_session(KEYS[1], KEYS[2], ARGV[3])
return {'created', redis.call('HGET', KEYS[1], 'created_at')}
