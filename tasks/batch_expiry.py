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

import redis

from .keys import Keys
from .models import utcnow
from .scripts import cached
from .settings import Settings


def unfinished_ttl(settings: Settings) -> int:
    """A running batch's expiry, renewed by each finished turn: never before its jobs' records."""
    return settings.result_ttl + settings.batch_max_idle


def turns_finished(r: redis.Redis, keys: Keys, settings: Settings, batch_id: str, turns: int = 1) -> int:
    """Count ``turns`` of the batch as finished; the turns left (-1: the batch record is gone)."""
    script = cached(r, "batch_turns_finished")
    return int(script(keys=[keys.batch(batch_id), keys.batch_conversations(batch_id)],
                      args=[turns, utcnow().isoformat(), settings.result_ttl, unfinished_ttl(settings)]))


def mark_finished(r: redis.Redis, keys: Keys, settings: Settings, batch_id: str) -> str | None:
    """A read saw every turn finished: record when (first time only) and start the result TTL."""
    script = cached(r, "batch_mark_finished")
    return script(keys=[keys.batch(batch_id), keys.batch_conversations(batch_id)],
                  args=[utcnow().isoformat(), settings.result_ttl])
