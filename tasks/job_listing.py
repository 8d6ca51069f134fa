"""Which jobs a namespace has now: running and queued (from the sessions that have work), and
recently finished (the ``recent`` index every commit joins); what ``chatq jobs list`` and
``chatq top`` show.

Nothing here is on a job's path: reads only, chunked pipelines, bounded by the sessions with work
and the ``RECENT_MAX`` newest finished jobs.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from itertools import islice
from typing import NamedTuple

import redis
from pydantic import BaseModel, Field

from .job_store import decode_job
from .keys import Keys, bucket
from .models import Job, JobStatus
from .session_machine import RECENT_MAX

CHUNK = 500
SNAPSHOT_MAX = 5_000
"""Finished jobs a snapshot reads at most (a window busier than this shows a lower bound)."""


class FleetSnapshot(BaseModel):
    """What ``chatq top`` draws: work in the namespace now, and what finished in the last ``window`` s."""

    sessions_with_work: int
    running: int = Field(description="Jobs running (sessions whose head job is held by a worker).")
    queued: int
    finished: dict[str, int] = Field(description="Jobs finished in the window, by status.")
    errors: dict[str, int] = Field(description="Failed jobs in the window, by error type.")
    window: float
    jobs_per_second: float
    provider_retries: int = Field(description="Provider retries of the jobs finished in the window.")
    longest_running: list[Job] = Field(description="The jobs running longest, oldest start first.")


class Timing(NamedTuple):
    """A finished job's times (epoch seconds) and status: what the console's hourly plots need of it."""

    status: str
    created: float
    started: float | None
    finished: float


_TIMING_FIELDS = ("status", "created_at", "started_at", "finished_at")


def _epoch(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


class JobListing:
    def __init__(self, r: redis.Redis, keys: Keys):
        self.r = r
        self.keys = keys

    def _records(self, job_ids: list[str]) -> list[Job]:
        out: list[Job] = []
        for start in range(0, len(job_ids), CHUNK):
            pipe = self.r.pipeline(transaction=False)
            for job_id in job_ids[start:start + CHUNK]:
                pipe.hgetall(self.keys.job(job_id))
            out += [decode_job(f) for f in pipe.execute() if f]
        return out

    def active(self, session_id: str | None = None) -> list[Job]:
        """Running and queued jobs, running first, each session's in FIFO order."""
        sessions = [session_id] if session_id else self.r.zrange(self.keys.pending, 0, -1)
        ids: list[str] = []
        for start in range(0, len(sessions), CHUNK):
            pipe = self.r.pipeline(transaction=False)
            for sid in sessions[start:start + CHUNK]:
                pipe.lrange(self.keys.fifo(sid), 0, -1)
            ids += [j for fifo in pipe.execute() for j in fifo]
        jobs = self._records(ids)
        return sorted(jobs, key=lambda j: j.status != JobStatus.running)

    def recent(self, limit: int = 50, status: str | None = None, session_id: str | None = None,
               since_ms: float | None = None) -> list[Job]:
        """Finished jobs, newest first (the ``RECENT_MAX`` newest are indexed)."""
        low = "-inf" if since_ms is None else since_ms
        tag = bucket(session_id) if session_id else None
        out: list[Job] = []
        for start in range(0, RECENT_MAX, CHUNK):
            page = self.r.zrevrangebyscore(self.keys.recent, "+inf", low, start=start, num=CHUNK)
            for job in self._records([j for j in page if tag is None or j[:4] == tag]):
                if (status is None or job.status == status) and (session_id is None or job.session_id == session_id):
                    out.append(job)
                    if len(out) >= limit:
                        return out
            if len(page) < CHUNK:
                break
        return out

    def timings(self, since_ms: float, limit: int = SNAPSHOT_MAX) -> list[Timing]:
        """The newest ``limit`` jobs finished since ``since_ms``, newest first: four fields of each record
        (``HMGET``), not the whole record with its reply, since a plot polled every few seconds reads
        a busy hour's thousands of them."""
        out: list[Timing] = []
        for start in range(0, min(limit, RECENT_MAX), CHUNK):
            page = self.r.zrevrangebyscore(self.keys.recent, "+inf", since_ms, start=start,
                                           num=min(CHUNK, limit - start))
            pipe = self.r.pipeline(transaction=False)
            for job_id in page:
                pipe.hmget(self.keys.job(job_id), _TIMING_FIELDS)
            for status, created, started, finished in pipe.execute():
                if status is not None and created and finished:  # an expired record reads as all None
                    out.append(Timing(status, _epoch(created), _epoch(started), _epoch(finished)))
            if len(page) < CHUNK:
                break
        return out

    def list(self, status: str | None = None, session_id: str | None = None, limit: int = 50) -> list[Job]:
        """``chatq jobs list``: running and queued jobs, then recently finished ones, up to ``limit``."""
        jobs: list[Job] = []
        if status in (None, "running", "queued"):
            jobs = [j for j in self.active(session_id) if status is None or j.status == status]
        if status not in ("running", "queued") and len(jobs) < limit:
            jobs += self.recent(limit - len(jobs), status, session_id)
        return jobs[:limit]

    def snapshot(self, window: float = 10.0, longest: int = 10) -> FleetSnapshot:
        active = self.active()
        running = [j for j in active if j.status == JobStatus.running]
        finished = self.recent(SNAPSHOT_MAX, since_ms=(time.time() - window) * 1000)
        return FleetSnapshot(
            sessions_with_work=len({j.session_id for j in active}), running=len(running),
            queued=len(active) - len(running), window=window,
            finished=dict(Counter(j.status.value for j in finished)),
            errors=dict(Counter(j.error.type for j in finished if j.error and j.status == JobStatus.failed)),
            jobs_per_second=round(len(finished) / window, 2),
            provider_retries=sum(j.provider_retries for j in finished),
            longest_running=list(islice(sorted(running, key=lambda j: j.started_at or j.created_at), longest)),
        )
