-- unindex: remove members from an index ZSET only where their score is still the one the caller
-- read (compare-and-delete), so an entry renewed meanwhile stays.
--
-- KEYS[1] index
-- ARGV[1..] member, score, member, score...
--
-- Returns the number removed.
local removed = 0
for i = 1, #ARGV, 2 do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i])) == tonumber(ARGV[i + 1]) then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
