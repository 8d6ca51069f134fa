"""Per-session order in Redis: a FIFO of job IDs per session and a lease on its head.

Celery only delivers wake-ups ("session S has work"), and only when no idle runner thread can be
handed the session directly (``chatq.worker.handoff``); whoever holds a session's lease runs its queue
head, one job at a time. Every transition is one Lua script, so a job's history append,
its result and its removal from the queue commit together, fenced by the lease token: a worker
that lost its lease can never append a turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import redis

from .keys import Keys
from .models import Checkpoint, JobError, Message, Usage, utcnow

_SUBMIT = """
-- KEYS: job, queue, pending, idem, lease, idle ; ARGV: job_id, session_id, on_busy, score, idem_ttl,
--       inbox_prefix, namespace, fields...
if KEYS[4] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {'existing', existing} end
end
if ARGV[3] == 'reject' and redis.call('LLEN', KEYS[2]) > 0 then return {'busy', ''} end
redis.call('HSET', KEYS[1], unpack(ARGV, 8))
local queued = redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[5]) end
if queued > 1 then return {'queued-behind', ARGV[1]} end
if redis.call('EXISTS', KEYS[5]) == 1 then return {'held', ARGV[1]} end
if KEYS[6] ~= '' then
  local t = redis.call('TIME')
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  local waiter = redis.call('ZPOPMAX', KEYS[6])[1]
  if waiter then
    local inbox = ARGV[6] .. waiter
    redis.call('RPUSH', inbox, ARGV[7] .. ' ' .. ARGV[2])
    redis.call('PEXPIRE', inbox, 60000)
    return {'handed', ARGV[1]}
  end
end
return {'created', ARGV[1]}
"""

_CANCEL = """
-- KEYS: job, queue, pending ; ARGV: job_id, session_id, now, ttl, channel
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'unknown' end
if status ~= 'queued' then return status end
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
if redis.call('LLEN', KEYS[2]) == 0 then redis.call('ZREM', KEYS[3], ARGV[2]) end
redis.call('PUBLISH', ARGV[5], 'cancelled')
return 'cancelled'
"""

_TAKE = """
-- The lease holder's next step: take the queue head and start it, or release an empty queue.
-- With acquire_ms > 0 it first takes a free lease (a worker's first step on a woken session).
-- KEYS: queue, lease, session, sessions, pending, messages ; ARGV: token, now, max_attempts, ttl,
--       session_id, score, exhausted_error, worker, history_limit, key_prefix, acquire_ms
local holder = redis.call('GET', KEYS[2])
if holder ~= ARGV[1] then
  if holder or ARGV[11] == '0' then return {'lost'} end
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[11])
end
local job_id = redis.call('LINDEX', KEYS[1], 0)
if not job_id then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[5], ARGV[5])
  return {'released'}
end
local job = ARGV[10] .. ':job:' .. job_id
local checkpoint_key = job .. ':checkpoint'
local status = redis.call('HGET', job, 'status')
if (not status) or (status ~= 'queued' and status ~= 'running') then
  redis.call('LPOP', KEYS[1])
  return {'skip', job_id}
end
if redis.call('HSETNX', KEYS[3], 'created_at', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[3], 'updated_at', ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[5])
end
local attempts = redis.call('HINCRBY', job, 'attempts', 1)
if attempts > tonumber(ARGV[3]) then
  redis.call('HSET', job, 'status', 'failed', 'finished_at', ARGV[2], 'error', ARGV[7])
  redis.call('EXPIRE', job, ARGV[4])
  redis.call('DEL', checkpoint_key)
  redis.call('LPOP', KEYS[1])
  redis.call('PUBLISH', ARGV[10] .. ':done:' .. job_id, 'failed')
  return {'exhausted', job_id}
end
redis.call('HSETNX', job, 'started_at', ARGV[2])
redis.call('HSET', job, 'status', 'running', 'worker', ARGV[8])
local fields = redis.call('HGETALL', job)
local out = {'run', job_id, redis.call('GET', checkpoint_key) or '', #fields}
for _, v in ipairs(fields) do table.insert(out, v) end
local limit = tonumber(ARGV[9])
if limit > 0 then
  for _, m in ipairs(redis.call('LRANGE', KEYS[6], -limit, -1)) do table.insert(out, m) end
end
return out
"""

_CHECKPOINT = """
-- KEYS: lease, checkpoint ; ARGV: token, value
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""

_COMMIT = """
-- KEYS: job, queue, lease, session, messages, checkpoint, pending
-- ARGV: token, job_id, now, ttl, status, result, error, prompt, completion, total, model,
--       session_id, channel, messages...
-- Returns 'ok', or 'released' when the queue is now empty and the lease was given up with it.
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 'lost' end
if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[2] then return 'moved' end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 'not-running' end
if #ARGV > 13 then redis.call('RPUSH', KEYS[5], unpack(ARGV, 14)) end
redis.call('HSET', KEYS[4], 'updated_at', ARGV[3])
redis.call('HINCRBY', KEYS[4], 'prompt_tokens', ARGV[8])
redis.call('HINCRBY', KEYS[4], 'completion_tokens', ARGV[9])
redis.call('HINCRBY', KEYS[4], 'total_tokens', ARGV[10])
if ARGV[11] ~= '' then redis.call('HSET', KEYS[4], 'model', ARGV[11]) end
redis.call('HSET', KEYS[1], 'status', ARGV[5], 'finished_at', ARGV[3])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[7]) end
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('DEL', KEYS[6])
redis.call('LPOP', KEYS[2])
redis.call('PUBLISH', ARGV[13], ARGV[5])
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[3])
  redis.call('ZREM', KEYS[7], ARGV[12])
  return 'released'
end
return 'ok'
"""

_HAND_OFF = """
-- KEYS: lease, queue, pending ; ARGV: token, session_id ; returns the jobs left queued, or -1 if lost
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
local queued = redis.call('LLEN', KEYS[2])
if queued == 0 then redis.call('ZREM', KEYS[3], ARGV[2]) end
return queued
"""

_RENEW = """
-- KEYS: leases... ; ARGV: ttl_ms, tokens... ; returns the indexes (1-based) of lost leases
local lost = {}
for i, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[i + 1] then
    redis.call('PEXPIRE', key, ARGV[1])
  else
    table.insert(lost, i)
  end
end
return lost
"""

_SWEEP = """
-- KEYS: pending ; ARGV: now, older_than, limit, key_prefix
local out = {}
local sids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, sid in ipairs(sids) do
  local base = ARGV[4] .. ':session:' .. sid
  if redis.call('LLEN', base .. ':queue') == 0 then
    redis.call('ZREM', KEYS[1], sid)
  else
    redis.call('ZADD', KEYS[1], ARGV[1], sid)
    if redis.call('EXISTS', base .. ':lease') == 0 then table.insert(out, sid) end
  end
end
return out
"""


@dataclass
class Taken:
    """The lease holder's next step: ``run`` (with the job, its checkpoint and the history tail),
    ``released`` (queue empty), ``lost`` (lease gone), ``skip`` or ``exhausted`` (job dropped)."""

    outcome: str
    job_id: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    history: list[Message] = field(default_factory=list)


def _iso(now: datetime) -> str:
    return now.isoformat()


class SessionQueue:
    def __init__(self, r: redis.Redis, keys: Keys, result_ttl: int = 86400):
        self.r = r
        self.keys = keys
        self.result_ttl = result_ttl
        self._submit = r.register_script(_SUBMIT)
        self._cancel = r.register_script(_CANCEL)
        self._take = r.register_script(_TAKE)
        self._checkpoint = r.register_script(_CHECKPOINT)
        self._commit = r.register_script(_COMMIT)
        self._hand_off = r.register_script(_HAND_OFF)
        self._renew = r.register_script(_RENEW)
        self._sweep = r.register_script(_SWEEP)

    # producer side
    def submit(
        self,
        job_id: str,
        session_id: str,
        fields: dict[str, str],
        on_busy: str = "enqueue",
        idempotency_key: str | None = None,
        client: redis.Redis | None = None,
        hand_to: Keys | None = None,
        queue: str = "",
    ) -> tuple[str, str]:
        """Append a job to its session's FIFO. Returns (outcome, job_id).

        Outcomes: ``created`` (alone in its queue and nobody holds it: publish a wake-up),
        ``handed`` (given to an idle runner thread of ``queue`` registered under ``hand_to``'s
        namespace: no wake-up needed), ``held`` (the lease holder will reach it: it cannot release
        a non-empty queue), ``queued-behind`` (an earlier job's wake-up or holder will reach it; the
        sweeper covers a dead one), ``existing`` (idempotency key seen) or ``busy``.
        """
        k = self.keys
        now = utcnow()
        flat = [x for pair in fields.items() for x in pair]
        res = self._submit(
            keys=[k.job(job_id), k.queue(session_id), k.pending,
                  k.idempotency(idempotency_key) if idempotency_key else "", k.lease(session_id),
                  hand_to.idle(queue) if hand_to else ""],
            args=[job_id, session_id, on_busy, now.timestamp(), self.result_ttl,
                  hand_to.inbox() if hand_to else "", k.ns, *flat],
            client=client,
        )
        return res[0], res[1]

    def cancel(self, job_id: str, session_id: str) -> str:
        k = self.keys
        return self._cancel(
            keys=[k.job(job_id), k.queue(session_id), k.pending],
            args=[job_id, session_id, _iso(utcnow()), self.result_ttl, k.done_channel(job_id)],
        )

    # worker side
    def take(self, session_id: str, token: str, max_attempts: int, worker: str = "",
             history_limit: int = 0, acquire_ms: int = 0) -> Taken:
        """Start the queue head (one round trip: job, checkpoint and history tail come back with it).

        ``acquire_ms``: first take the session's lease for that long if nobody holds it; ``lost``
        means another worker holds it (or, without ``acquire_ms``, that this one no longer does).
        """
        k = self.keys
        now = utcnow()
        error = JobError(
            type="WorkerLost",
            message=f"the job's worker died {max_attempts} times; giving up so the session can move on",
            retryable=False,
        )
        res = self._take(
            keys=[k.queue(session_id), k.lease(session_id), k.session(session_id), k.sessions, k.pending,
                  k.messages(session_id)],
            args=[token, _iso(now), max_attempts, self.result_ttl, session_id, now.timestamp(),
                  error.model_dump_json(), worker, history_limit, k.ns, acquire_ms],
        )
        if res[0] != "run":
            return Taken(res[0], res[1] if len(res) > 1 else None)
        n = int(res[3])
        fields = dict(zip(res[4:4 + n:2], res[5:4 + n:2]))
        return Taken("run", res[1], fields, Checkpoint.model_validate_json(res[2]) if res[2] else None,
                     [Message.model_validate_json(m) for m in res[4 + n:]])

    def save_checkpoint(self, session_id: str, job_id: str, token: str, checkpoint: Checkpoint) -> bool:
        return bool(self._checkpoint(
            keys=[self.keys.lease(session_id), self.keys.checkpoint(job_id)],
            args=[token, checkpoint.model_dump_json()],
        ))

    def commit(
        self,
        session_id: str,
        job_id: str,
        token: str,
        status: str,
        messages: list[Message],
        usage: Usage,
        result_json: str = "",
        error_json: str = "",
    ) -> str:
        """Append the turn, store the result and pop the job, fenced by the lease token.

        Returns ``ok``, ``released`` (nothing was left queued, so the lease went too, saving the
        holder a round trip), or why it refused: ``lost``, ``moved``, ``not-running``.
        """
        k = self.keys
        return self._commit(
            keys=[k.job(job_id), k.queue(session_id), k.lease(session_id), k.session(session_id),
                  k.messages(session_id), k.checkpoint(job_id), k.pending],
            args=[token, job_id, _iso(utcnow()), self.result_ttl, status, result_json, error_json,
                  usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.model or "",
                  session_id, k.done_channel(job_id), *(m.model_dump_json() for m in messages)],
        )

    def hand_off(self, session_id: str, token: str) -> int:
        """Give up the lease with work still queued (warm shutdown); returns the jobs left, -1 if lost."""
        k = self.keys
        return int(self._hand_off(keys=[k.lease(session_id), k.queue(session_id), k.pending],
                                  args=[token, session_id]))

    def renew(self, leases: list[tuple[str, str]], lease_ms: int) -> list[str]:
        """Extend held leases; returns the lease keys found lost."""
        if not leases:
            return []
        lost = self._renew(keys=[key for key, _ in leases], args=[lease_ms, *(t for _, t in leases)])
        return [leases[i - 1][0] for i in lost]

    def sweep(self, older_than_s: float, limit: int = 1000) -> list[str]:
        """Sessions with queued work, no lease and no recent wake-up: they need a new wake-up."""
        now = utcnow().timestamp()
        return self._sweep(keys=[self.keys.pending],
                           args=[now, now - older_than_s, limit, self.keys.ns])
