"""How long a batch's record lives: it must outlive its jobs' records, and never live forever.

A finished job's record expires ``result_ttl`` after it finished; a queued one has no expiry. So
the batch's two keys get, at submission, ``result_ttl + batch_max_idle``, and its hash counts the
turns still ``unfinished``. Every finished turn (committed by a worker, given up after too many
attempts, or cancelled) counts down in one script, right after the job's own expiry was set, and
sets the keys' expiry again:

- while turns remain, to ``result_ttl + batch_max_idle`` from now, so a batch that makes progress
  is kept, and one that stops (no worker for a week, by default) is dropped, not kept forever;
- on the last turn, to ``result_ttl`` from now, with ``finished_at``: the record expires just
  after the last job's, whether or not anyone ever reads the batch.

A count lost to a worker killed between its commit and the count-down only delays the expiry (to
the idle bound), and a status read that sees every turn finished marks the batch finished itself.
"""

from __future__ import annotations

from functools import lru_cache

import redis

from .keys import Keys
from .models import utcnow
from .settings import Settings

_TURNS_FINISHED = """
-- KEYS: batch, conversations ; ARGV: turns, now, result_ttl, unfinished_ttl ; returns the turns left
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local left = redis.call('HINCRBY', KEYS[1], 'unfinished', -tonumber(ARGV[1]))
local ttl = ARGV[4]
if left <= 0 then
  redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[2])
  ttl = ARGV[3]
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return left
"""

_MARK_FINISHED = """
-- KEYS: batch, conversations ; ARGV: now, result_ttl ; returns finished_at, or false if expired
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HSETNX', KEYS[1], 'finished_at', ARGV[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return redis.call('HGET', KEYS[1], 'finished_at')
"""


def unfinished_ttl(settings: Settings) -> int:
    """A running batch's expiry, renewed by each finished turn: never before its jobs' records."""
    return settings.result_ttl + settings.batch_max_idle


@lru_cache
def _scripts(r: redis.Redis):
    return r.register_script(_TURNS_FINISHED), r.register_script(_MARK_FINISHED)


def turns_finished(r: redis.Redis, keys: Keys, settings: Settings, batch_id: str, turns: int = 1) -> int:
    """Count ``turns`` of the batch as finished; the turns left (-1: the batch record is gone)."""
    script = _scripts(r)[0]
    return int(script(keys=[keys.batch(batch_id), keys.batch_conversations(batch_id)],
                      args=[turns, utcnow().isoformat(), settings.result_ttl, unfinished_ttl(settings)]))


def mark_finished(r: redis.Redis, keys: Keys, settings: Settings, batch_id: str) -> str | None:
    """A read saw every turn finished: record when (first time only) and start the result TTL."""
    script = _scripts(r)[1]
    return script(keys=[keys.batch(batch_id), keys.batch_conversations(batch_id)],
                  args=[utcnow().isoformat(), settings.result_ttl])
