-- announce: tell the fleet a session is being given work. Runs just before the submit that gives
-- it, in the same pipeline (a fleet key and a session's keys cannot share one script on a
-- cluster): the session is marked pending for the sweeper, with a score that only ever grows, so
-- the sweeper's compare-and-delete (sweep) never drops a mark made after it looked; and it is
-- listed if it is not yet.
--
-- KEYS[1] pending    the namespace's sessions given work, scored by when (ms, Redis's clock)
-- KEYS[2] sessions   the namespace's listing, scored by creation time
-- ARGV[1] session_id
-- ARGV[2] created    its score in the listing if it is not listed (its created_at if new, in seconds)
--
-- Returns its new pending score.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if last and last >= now then now = last + 1 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZADD', KEYS[2], 'NX', ARGV[2], ARGV[1])
return now
