-- webhook_claim: claim a finished job's webhook delivery; the first caller wins, so a delivery is
-- queued once however often it is requested.
--
-- KEYS[1] job
-- ARGV[1] field    the job field holding the delivery status
-- ARGV[2] status   the pending status (JSON); the job's callback URL is filled in here
--
-- Returns the callback URL if claimed, nil if the job has none or was claimed before.
local url = redis.call('HGET', KEYS[1], 'callback_url')
if (not url) or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return false end
local status = cjson.decode(ARGV[2])
status['url'] = url
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(status))
return url
