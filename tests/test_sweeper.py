"""The sweeper against real Redis, on an injected clock: a stalled session is woken at the first
look, a backlog is not re-woken every two intervals, and a session that moved since its wake-up
(a dead worker's, a lost wake-up's) is woken at once again."""

from __future__ import annotations

import uuid

import pytest
import redis

from chatq.tasks.job_store import encode_job
from chatq.tasks.keys import Keys, new_job_id
from chatq.tasks.models import Job, Usage
from chatq.tasks.session_machine import CommitOutcome, SessionMachine, TakeOutcome
from chatq.tasks.session_store import SessionStore
from chatq.worker.sweeper import BACKOFF_CAP, Sweeper

from .conftest import REDIS_URL

INTERVAL = 5.0
"""The default: the clock is injected, so nothing waits for it."""


class Clock:
    """Redis's clock (ms), moved by hand in sweep intervals from ``start_ms``."""

    def __init__(self):
        self.start_ms = 0
        self.intervals = 0.0

    def __call__(self) -> int:
        return self.start_ms + int(self.intervals * INTERVAL * 1000)


class Fixture:
    def __init__(self, r: redis.Redis, keys: Keys):
        self.r, self.keys = r, keys
        self.machine = SessionMachine(r, keys)
        self.clock = Clock()
        self.woken: list[str] = []
        self.sweeper = Sweeper(r, keys, lambda: [(self.machine, SessionStore(r, keys))],
                               lambda sid, ns: self.woken.append(sid), INTERVAL, clock=self.clock)

    def submit(self, sid: str) -> str:
        job = Job(job_id=new_job_id(sid), session_id=sid, message="hi")
        self.machine.submit(job.job_id, sid, encode_job(job))
        return job.job_id

    def sweep_at(self, intervals: float) -> list[str]:
        """The sweep of that interval, whichever worker runs it. Intervals count from the first
        sweep's call: the jobs submitted before it are at most that old."""
        self.clock.start_ms = self.clock.start_ms or self.machine.redis_ms()
        self.clock.intervals = intervals
        self.r.delete(self.keys.sweep_lock)  # the lock is real time: this is another interval's sweep
        return self.sweeper.sweep_once()

    def wakes(self, sid: str, intervals: range) -> list[int]:
        """The intervals whose sweep woke ``sid``."""
        return [i for i in intervals if sid in self.sweep_at(i)]

    def run(self, sid: str, job_id: str, token: str = "w", release: bool = True) -> None:
        """A worker takes the session and runs its head; with ``release``, commits it (emptying the FIFO)."""
        assert self.machine.take(sid, token, job_id, 3, acquire_ms=60_000).outcome is TakeOutcome.run
        if release:
            committed = self.machine.commit(sid, job_id, token, "succeeded", [], Usage())
            assert committed.outcome is CommitOutcome.released


@pytest.fixture
def f():
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = Keys(f"sw{uuid.uuid4().hex[:8]}")
    yield Fixture(r, keys)
    for k in r.scan_iter(f"{keys.ns}:*"):
        r.delete(k)


def test_a_stalled_session_is_woken_at_the_first_look_then_with_a_doubling_capped_back_off(f):
    f.submit("s")
    assert f.sweep_at(1) == [], "its mark is younger than 2 intervals: its own wake-up may be on its way"
    # Looks every 2 intervals (each renews the mark); wakes after 4, 8, 16, 32, then 64 (the cap).
    assert f.wakes("s", range(2, 200)) == [2, 6, 14, 30, 62, 126, 190]
    assert BACKOFF_CAP == 64
    assert f.r.hlen(f.keys.woken) == 1 and f.r.zcard(f.keys.pending) == 1


def test_a_backlog_costs_each_session_a_few_wake_ups_not_one_every_two_intervals(f):
    sids = [f"s{i}" for i in range(50)]
    for sid in sids:
        f.submit(sid)
    for i in range(1, 61):  # five minutes at the default interval, nobody taking any of them
        f.sweep_at(i)
    assert sorted(f.woken) == sorted(sids * 4), "woken at 2, 6, 14 and 30 intervals; 30 times each before"


def test_a_dead_workers_session_is_woken_at_the_first_look_after_its_lease_expired(f):
    job_id = f.submit("s")
    assert f.wakes("s", range(2, 15)) == [2, 6, 14], "backed off to 16 intervals"
    f.run("s", job_id, release=False)  # a worker took it at last ...
    assert f.sweep_at(16) == [] and not f.r.hexists(f.keys.woken, "s"), "seen held: its back-off is forgotten"
    f.r.delete(f.keys.lease("s"))  # ... and was killed: its lease expired
    assert f.wakes("s", range(18, 30)) == [18, 22], "woken at the first look, then backing off anew from 4"


def test_a_session_taken_and_lost_between_two_looks_is_woken_at_the_next_one(f):
    """No look saw the lease (a big backlog spaces a session's looks beyond the lease time), but
    the head's attempts moved: the session's wake-up is not the one that is still queued."""
    job_id = f.submit("s")
    assert f.wakes("s", range(2, 15)) == [2, 6, 14]
    f.run("s", job_id, release=False)
    f.r.delete(f.keys.lease("s"))
    assert f.wakes("s", range(16, 20)) == [16]


def test_a_lost_wake_up_after_the_session_went_idle_is_recovered_at_the_first_look(f):
    job_id = f.submit("s")
    assert f.wakes("s", range(2, 15)) == [2, 6, 14]
    f.run("s", job_id)  # served and emptied between two looks ...
    f.clock.intervals = 15
    f.submit("s")  # ... then given a job whose wake-up the producer never published
    marked = (f.r.zscore(f.keys.pending, "s") - f.clock.start_ms) / (INTERVAL * 1000)
    eligible = next(i for i in range(15, 30) if i - 2 >= marked)  # the first look at its new mark
    assert f.wakes("s", range(15, eligible + 1)) == [eligible], "a new head: woken at the first look"


def test_entries_go_when_their_sessions_are_found_idle_or_held(f):
    jobs = {sid: f.submit(sid) for sid in ("idle", "held", "stalled")}
    assert sorted(f.sweep_at(2)) == ["held", "idle", "stalled"]
    assert f.r.hlen(f.keys.woken) == 3
    f.run("idle", jobs["idle"])
    f.run("held", jobs["held"], release=False)
    assert f.sweep_at(4) == []
    assert f.r.hkeys(f.keys.woken) == ["stalled"]
    assert set(f.r.zrange(f.keys.pending, 0, -1)) == {"held", "stalled"}, "the idle session's mark went too"
