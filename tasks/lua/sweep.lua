-- sweep: apply what the sweeper saw of the sessions whose pending marks it read, and say which to
-- wake. An idle session's mark is dropped unless renewed since it was read (compare-and-delete:
-- a submit landing after the look keeps its mark); any other mark is renewed (looked at again
-- after the sweep's age). A stalled session (work, no lease) is woken at once unless the sweeper
-- woke it before in the same state (same head job, same attempts: nobody ran it since) and that
-- wake's back-off has not run out; each wake in the same state doubles the back-off, up to max_ms.
-- Its entry in woken goes when the session is found idle or held, or its state changes.
--
-- KEYS[1] pending      the namespace's sessions given work, scored by when (ms)
-- KEYS[2] woken        the stalled sessions woken: session_id -> "<backoff_ms> <due_ms> <state>"
-- ARGV[1] now          ms, Redis's clock as the sweeper read it: the renewed marks' score
-- ARGV[2] first_ms     the back-off after a session's first wake in a state
-- ARGV[3] max_ms       the longest back-off
-- ARGV[4..] looks      session_id, the mark's score as read, and what was seen: 'idle', 'held', or
--                      a stalled session's state, '<head job_id>:<its attempts>' ...
--
-- Returns the IDs of the sessions to wake now.
local now, first, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local wake = {}
for i = 4, #ARGV, 3 do
  local sid, seen = ARGV[i], ARGV[i + 2]
  if seen == 'idle' then
    if tonumber(redis.call('ZSCORE', KEYS[1], sid)) == tonumber(ARGV[i + 1]) then
      redis.call('ZREM', KEYS[1], sid)
    end
    redis.call('HDEL', KEYS[2], sid)
  else
    redis.call('ZADD', KEYS[1], 'XX', 'GT', now, sid)
    if seen == 'held' then
      redis.call('HDEL', KEYS[2], sid)
    else
      local backoff, due, state
      local entry = redis.call('HGET', KEYS[2], sid)
      if entry then backoff, due, state = string.match(entry, '^(%d+) (%d+) (.*)$') end
      if state ~= seen then
        backoff = math.min(most, first)
      elseif now >= tonumber(due) then
        backoff = math.min(most, 2 * tonumber(backoff))
      else
        backoff = nil  -- woken in this state, and its back-off runs on
      end
      if backoff then
        redis.call('HSET', KEYS[2], sid, string.format('%d %d %s', backoff, now + backoff, seen))
        table.insert(wake, sid)
      end
    end
  end
end
return wake
