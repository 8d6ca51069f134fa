"""Per-tenant queue quota: how many jobs a tenant has queued or running, counted from Redis.

The count is the sum of the session FIFOs' lengths over the tenant's ``pending`` ZSET (a job
stays in its FIFO until its commit pops it, so that sum is exactly queued + running), read in
pipelined chunks (sessions live in many hash slots, so no single script can), stopping as soon as
it reaches the limit. A counter kept by INCR/DECR would be O(1) but needs every exit path (commit,
cancel, exhausted retries, expiry) to decrement it, and would drift forever after one miss; this
count cannot drift. It is checked before submitting, not inside the submit script, so concurrent
submissions may overshoot the limit by at most the number of requests in flight for that tenant.
"""

from __future__ import annotations

from dataclasses import dataclass
from chatq.tasks.client import ChatClient

from .errors import QuotaExceeded

@dataclass(frozen=True)
class Active:
    jobs: int
    running: int

    @property
    def queued(self) -> int:
        return self.jobs - self.running


def count_active(client: ChatClient, limit: int = 0) -> Active:
    """Queued + running jobs of the client's namespace; with ``limit``, stops counting at it."""
    jobs, running = client.machine.count_active(limit)
    return Active(jobs, running)


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
