"""What one contender's run produced, and the numbers the table shows."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .workload import Check


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


@dataclass
class Run:
    """One contender on one workload. Times are epoch seconds; delays are in seconds."""

    name: str
    latency: float
    workload: str = ""  # "SxM": sessions x messages
    jobs: int = 0
    failed: int = 0
    elapsed: float = math.nan
    submit_seconds: float = math.nan  # how long the producer took to submit the workload
    submit_cpu: float = math.nan  # CPU seconds of the submitting thread
    submit_ms: dict[str, float] = field(default_factory=dict)  # median wall ms of one submit: to a "new", "existing" session
    first_to_last: float = math.nan  # first submission -> last job done (NaN when cut at the budget)
    budget: float = 0.0  # the run was measured for this many seconds only (0: until every job was done)
    unfinished: int = 0  # jobs still unfinished at the budget (they finished afterwards, unmeasured)
    wakeups: int = -1  # Celery wake-ups the chatq node ran during the run, drain included (-1: not counted)
    peak_threads: int = 0  # of the node, all processes
    peak_procs: int = 0
    check: Check = field(default_factory=Check)
    to_start: list[float] = field(default_factory=list)   # ready (submitted, predecessor done) → started
    to_visible: list[float] = field(default_factory=list)  # finished → the waiting client has it
    done_at: list[float] = field(default_factory=list)     # when each job's result reached the client
    max_in_flight: int = 0
    mean_in_flight: float = math.nan  # sampled while the run lasted
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU per job, by process group ("submit": the
    # submitting thread of the client, per submitted job; every other group per finished job)
    peak_rss: int = 0
    redis_per_session: float = math.nan  # INFO used_memory delta per session, job records deleted
    redis_per_job: float = math.nan      # INFO used_memory delta per finished job's record
    keys_per_session: float = math.nan   # MEMORY USAGE of a session's keys (exact, no noise)
    keys_per_job: float = math.nan       # MEMORY USAGE of a finished job's record
    sessions: int = 0
    errors: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # the baseline's task IDs (their result keys)
    repeats: list[float] = field(default_factory=list)  # jobs/s of every repeat, when this is their median
    in_flight_repeats: list[int] = field(default_factory=list)  # max in flight of every repeat

    @property
    def total(self) -> int:
        return self.jobs + self.failed + self.unfinished

    @property
    def rate(self) -> float:
        """Jobs/s while the middle 80% of the jobs completed: ramp-up and the last stragglers of a
        burst say little about capacity and make single runs noisy."""
        done = sorted(self.done_at)
        if len(done) < 20:
            return self.overall_rate
        lo, hi = len(done) // 10, len(done) * 9 // 10 - 1
        return (hi - lo) / (done[hi] - done[lo]) if done[hi] > done[lo] else self.overall_rate

    @property
    def overall_rate(self) -> float:
        """Jobs/s from the first submission to the last result."""
        return self.jobs / self.elapsed if self.elapsed else math.nan

    def pct(self, which: str, p: float) -> float:
        return percentile(getattr(self, which), p) * 1000
