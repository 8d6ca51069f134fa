"""Per-tenant queue quota: how many jobs a tenant has queued or running, counted from Redis.

The count is the sum of the session FIFOs' lengths over the tenant's ``pending`` ZSET (a job
stays in its FIFO until its commit pops it, so that sum is exactly queued + running). One Lua
call, stopping as soon as it reaches the limit, so a check costs at most ``limit`` LLENs and
usually far fewer. A counter kept by INCR/DECR would be O(1) but needs every exit path (commit,
cancel, exhausted retries, expiry) to decrement it, and would drift forever after one miss; this
count cannot drift. It is checked before submitting, not inside the submit script, so concurrent
submissions may overshoot the limit by at most the number of requests in flight for that tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import redis

from chatq.tasks.client import ChatClient

from .errors import QuotaExceeded

_COUNT = """
-- KEYS: pending ; ARGV: key_prefix, limit (0: count all)
local limit = tonumber(ARGV[2])
local active, running = 0, 0
local sids = redis.call('ZRANGE', KEYS[1], 0, limit > 0 and limit - 1 or -1)
for _, sid in ipairs(sids) do
  local base = ARGV[1] .. ':session:' .. sid
  local n = redis.call('LLEN', base .. ':queue')
  active = active + n
  if n > 0 and redis.call('EXISTS', base .. ':lease') == 1 then running = running + 1 end
  if limit > 0 and active >= limit then break end
end
return {active, running}
"""


@dataclass(frozen=True)
class Active:
    jobs: int
    running: int

    @property
    def queued(self) -> int:
        return self.jobs - self.running


@lru_cache
def _script(r: redis.Redis):
    return r.register_script(_COUNT)


def count_active(client: ChatClient, limit: int = 0) -> Active:
    """Queued + running jobs of the client's namespace; with ``limit``, stops counting at it."""
    jobs, running = _script(client.r)(keys=[client.keys.pending], args=[client.keys.ns, limit])
    return Active(int(jobs), int(running))


def check_quota(client: ChatClient, limit: int, adding: int = 1) -> None:
    """Raise QuotaExceeded (429) if ``adding`` more jobs would pass ``limit`` (0: no limit)."""
    if limit <= 0:
        return
    active = count_active(client, limit).jobs
    if active + adding > limit:
        raise QuotaExceeded(
            f"the tenant has {active} jobs queued or running; the limit is {limit}",
            headers={"Retry-After": "5"},
        )
