-- Shared steps of the scripts that touch a session; a script splices this file in with the line
-- "--#include lib/session.lua" (tasks/scripts.py), so each step exists once.

-- Makes the session if it does not exist; true when this call made it.
local function ensure_session(meta, now)
  if redis.call('HSETNX', meta, 'created_at', now) == 0 then return false end
  redis.call('HSET', meta, 'updated_at', now)
  return true
end

-- The session has work queued or running: it is kept whatever its retention.
local function hold_session(meta, msgs)
  redis.call('PERSIST', meta)
  redis.call('PERSIST', msgs)
end

-- The session has nothing queued or running any more: from now its hash and history expire after
-- its retention (its own ttl, else the caller's default; 0 keeps them).
local function rest_session(meta, msgs, default_ttl)
  local ttl = tonumber(redis.call('HGET', meta, 'ttl') or default_ttl)
  if ttl > 0 then
    redis.call('EXPIRE', meta, ttl)
    redis.call('EXPIRE', msgs, ttl)
  else
    hold_session(meta, msgs)
  end
end
