-- Shared step of the hand-off scripts (spliced in by "--#include lib/idle.lua").

-- Drops the registrations whose deadline passed (Redis's clock, ms) and counts the live ones.
local function live_waiters(idle)
  local t = redis.call('TIME')
  redis.call('ZREMRANGEBYSCORE', idle, '-inf', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  return redis.call('ZCARD', idle)
end
