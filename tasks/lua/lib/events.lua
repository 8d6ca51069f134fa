-- A job's event log: a stream whose entry IDs are '<seq>-0', so seq counts 1, 2, 3... with no gaps
-- over the job's whole life, whichever script or worker writes, and a reader resumes with XREAD
-- from '<seq>-0'. Fields: t (the type), d (JSON data).

-- Appends one event; returns its seq. The log is trimmed to about maxlen entries.
local function emit_event(events, maxlen, etype, data)
  local last = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
  local seq = 1
  if #last > 0 then seq = tonumber(string.match(last[1][1], '^(%d+)')) + 1 end
  redis.call('XADD', events, 'MAXLEN', '~', maxlen, seq .. '-0', 't', etype, 'd', data)
  return seq
end

-- The job's record as the JSON of a Job (chatq.tasks.job_store stores nested fields as JSON and
-- numbers as digits): spliced as stored, never decoded and re-encoded, so nothing changes shape.
-- Every field job_store keeps as JSON (_JSON_FIELDS, PARTS_FIELD) or as a number is listed here.
local JOB_RAW = {attempts = true, provider_retries = true, result = true, error = true, last_error = true,
                 metadata = true, webhook = true, op = true, params = true, message_parts = true}
-- Stored under another name than the Job's: a message given as content parts (JSON) is the Job's
-- 'message', which otherwise holds the string as it is.
local JOB_NAME = {message_parts = 'message'}
-- Marks for the workers that are not the Job's: 'followed' (a reader follows it: follow.lua).
local JOB_HIDDEN = {followed = true}
local function job_json(job)
  local fields = redis.call('HGETALL', job)
  local parts = {}
  for i = 1, #fields, 2 do
    if not JOB_HIDDEN[fields[i]] then
      local value = fields[i + 1]
      if not JOB_RAW[fields[i]] then value = cjson.encode(value) end
      parts[#parts + 1] = cjson.encode(JOB_NAME[fields[i]] or fields[i]) .. ':' .. value
    end
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

-- The job finished (succeeded, failed or cancelled): its terminal event carries the finished
-- record, and the log expires with it.
local function emit_finished(job, events, maxlen, status, ttl)
  emit_event(events, maxlen, 'job.' .. status, job_json(job))
  redis.call('EXPIRE', events, ttl)
end
