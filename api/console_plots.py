"""The fleet page's plots over the last hour: jobs finished per minute, and how long they took.

Both come from what every commit already stores: the namespace's ``recent`` index (job IDs scored by
when they finished) and each job's record (``created_at``, ``started_at``, ``finished_at``). Nothing
is written on a job's path for them, so workers pay nothing; the console pays four fields per
finished job of the hour (``JobListing.timings``), read each time the panel refreshes. A busier hour
than ``SNAPSHOT_MAX`` jobs shows its newest ones only, and the plot says so.

Latency per minute is the p50 and p95 (nearest rank, as ``bench/stats.py``) of the jobs that ran and
finished in it: *run* is from a job's first start to its end (a rerun after a worker died included), *done*
from its submission to its end (its queue wait added).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from chatq.tasks.job_listing import SNAPSHOT_MAX, Timing

MINUTES = 60


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of ``values``; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


@dataclass
class Minute:
    ok: int = 0
    bad: int = 0
    run: list[float] = field(default_factory=list, repr=False)
    done: list[float] = field(default_factory=list, repr=False)

    @property
    def n(self) -> int:
        return self.ok + self.bad

    def ms(self, which: str, p: float) -> int | None:
        """The minute's ``run`` or ``done`` percentile in whole milliseconds (what the page shows)."""
        value = percentile(getattr(self, which), p)
        return None if value is None else round(value * 1000)


@dataclass
class LastHour:
    minutes: list[Minute]
    limit: int
    capped: bool = False
    """The read stopped at ``limit`` jobs: the oldest minutes shown are missing some."""

    @property
    def peak_jobs(self) -> int:
        return max([m.n for m in self.minutes] + [1])

    @property
    def peak_ms(self) -> int:
        """The latency plot's top: the largest p95, run or done, of any minute, up to a round 1, 2 or 5."""
        return _round_up(max([m.ms(w, 95) or 0 for m in self.minutes for w in ("run", "done")] + [1]))


def _round_up(ms: int) -> int:
    """The least of 1, 2, 5, 10, 20, 50... that is at least ``ms``."""
    step = 1
    while True:
        for k in (1, 2, 5):
            if k * step >= ms:
                return k * step
        step *= 10


def last_hour(timings: list[Timing], now: float, limit: int = SNAPSHOT_MAX) -> LastHour:
    """Per minute, oldest first, the last one ending at ``now``: counts by outcome and latencies."""
    minutes = [Minute() for _ in range(MINUTES)]
    for t in timings:
        age = int((now - t.finished) // 60)
        if not 0 <= age < MINUTES:
            continue
        m = minutes[MINUTES - 1 - age]
        if t.status == "succeeded":
            m.ok += 1
        else:
            m.bad += 1
        if t.started is not None:  # it ran (a job cancelled while queued has no latency)
            m.run.append(max(0.0, t.finished - t.started))
            m.done.append(max(0.0, t.finished - t.created))
    return LastHour(minutes, limit, capped=len(timings) >= limit)
