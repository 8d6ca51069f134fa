-- rate_limit: admit one provider call into this minute's request and token budget of a model.
--
-- KEYS[1] requests   the window's request counter
-- KEYS[2] tokens     the window's token counter
-- ARGV[1] rpm        requests per minute, 0: no limit
-- ARGV[2] tpm        tokens per minute, 0: no limit
-- ARGV[3] tokens     the call's estimated tokens
-- ARGV[4] ttl_s      the counters' expiry
--
-- Returns 0 if admitted (counted), 1 if it does not fit (nothing counted).
local rpm, tpm, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local used_r = tonumber(redis.call('GET', KEYS[1]) or '0')
local used_t = tonumber(redis.call('GET', KEYS[2]) or '0')
if rpm > 0 and used_r + 1 > rpm then return 1 end
if tpm > 0 and used_t > 0 and used_t + n > tpm then return 1 end
redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('INCRBY', KEYS[2], n); redis.call('EXPIRE', KEYS[2], ARGV[4])
return 0
