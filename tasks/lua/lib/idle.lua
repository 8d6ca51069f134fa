-- Shared step of the hand-off scripts (spliced in by "--#include lib/idle.lua").

-- Drops the registrations whose deadline passed (Redis's clock, ms) and sums the room of the live
-- ones: a member is "<host:pid>#<room>", one per worker process.
local function live_room(idle)
  local t = redis.call('TIME')
  redis.call('ZREMRANGEBYSCORE', idle, '-inf', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  local room = 0
  for _, member in ipairs(redis.call('ZRANGE', idle, 0, -1)) do
    room = room + (tonumber(string.match(member, '#(%d+)$')) or 0)
  end
  return room
end
