"""Drive chatq the way an application does: ``ChatClient.submit`` each message, ``ChatClient.wait``
for each job, then read every session back and check it.
"""

from __future__ import annotations

import math
import queue
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis

from chatq.tasks.client import ChatClient
from chatq.worker.handoff import GRACE
from chatq.tasks.keys import Keys
from chatq.tasks.models import Job
from chatq.tasks.settings import Settings

from .stats import Run
from .workload import Check, Workload, check


def make_client(settings: Settings, waiters: int) -> ChatClient:
    """A stock ChatClient whose Redis pool fits ``waiters`` concurrent waits (each ``wait`` holds a
    pool connection while it reads the job record; a burst of results wakes hundreds at once)."""
    pool = max(settings.redis_max_connections, waiters + 32)
    return ChatClient(settings=settings.model_copy(update={"redis_max_connections": pool}))


class _Timings:
    """Collects (job, time the waiting client had it) per (session, index), thread-safely."""

    def __init__(self) -> None:
        self.done: dict[tuple[str, int], tuple[Job, float]] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def wait(self, client: ChatClient, key: tuple[str, int], job_id: str, timeout: float | None) -> None:
        try:
            job = client.wait(job_id, timeout)
            seen = time.time()
            with self.lock:
                self.done[key] = (job, seen)
        except Exception as exc:  # reported as a failed job, never hangs the run
            with self.lock:
                self.errors.append(f"{key}: {exc!r}")

    def fill(self, run: Run, wl: Workload, started: float, cutoff: float | None = None) -> None:
        """The run's figures from the jobs the client had by ``cutoff`` (all of them without one)."""
        with self.lock:
            done = {k: v for k, v in self.done.items() if cutoff is None or v[1] <= cutoff}
        run.jobs = sum(1 for job, _ in done.values() if job.status == "succeeded")
        failed = [(k, job) for k, (job, _) in done.items() if job.status != "succeeded"]
        if failed:  # why, in the run's errors (the first few are printed)
            with self.lock:
                self.errors += [f"{k}: {job.status} after {job.attempts} attempt(s): {job.error or job.last_error}"
                                for k, job in failed[:5]]
        if cutoff is None:
            run.failed = wl.jobs - run.jobs
        else:
            run.failed = len(done) - run.jobs
            run.unfinished = wl.jobs - len(done)
        if done:
            run.elapsed = max(seen for _, seen in done.values()) - started
        run.done_at = sorted(seen for job, seen in done.values() if job.status == "succeeded")
        for (sid, j), (job, seen) in done.items():
            if job.started_at is None or job.finished_at is None:
                continue
            ready = max(job.created_at.timestamp(), started)  # a backlog's jobs are ready when taken up
            before = done.get((sid, j - 1))
            if before and before[0].finished_at:  # queued behind its own session's previous turn
                ready = max(ready, before[0].finished_at.timestamp())
            run.to_start.append(job.started_at.timestamp() - ready)
            run.to_visible.append(seen - job.finished_at.timestamp())


def check_sessions(client: ChatClient, wl: Workload) -> Check:
    total = Check()
    for sid, count in wl.counts.items():
        session = client.get_session(sid)
        actual = [(m.role, m.content) for m in session.messages] if session else []
        total.add(check(sid, count, actual, wl.words))
    return total


class Burst:
    """The whole workload submitted as fast as one producer can, and waited for: by default one
    waiting thread per session, each calling ``ChatClient.wait`` for its session's jobs in turn, as
    an application would; ``waiters="listen"``: one thread that only listens to the commits' done
    notifications (what waiting costs when nothing but the result's arrival is paid for), which
    takes the waiting client out of the node's figures.

    ``backlog``: the workers are paused (``pause``, e.g. SIGSTOP) while the workload is submitted and
    resumed at once (``resume``), as after an outage or a deploy: how fast a node takes up queued
    sessions, and how many calls it holds in flight when the producer is not what limits it. A
    paused worker's hand-off waiters expire, so every session goes by Celery message; without
    ``pause``, the workers' Celery consumers are cancelled instead.

    ``submit()``, then ``measure(budget)`` returns the figures of the jobs done within the budget
    (all of them without one); ``finish(run)`` waits for the rest, unmeasured, and counts them.
    The caller checks the sessions (``check_sessions``) once the measured part is over.
    """

    def __init__(self, client: ChatClient, wl: Workload, latency: float, timeout: float, backlog: bool = False,
                 waiters: str = "threads", pause: Callable[[], None] | None = None,
                 resume: Callable[[], None] | None = None, stream: bool = False):
        self.client, self.wl, self.backlog = client, wl, backlog
        self.stream = stream  # every job submitted to be streamed (ChatClient.submit's ``stream``)
        self.pause, self.resume = pause, resume
        self.run = Run("chatq" if not backlog else "chatq backlog", latency, workload=wl.shape,
                       sessions=len(wl.sessions))
        self.inbox: dict[str, queue.Queue] = {sid: queue.Queue() for sid in wl.sessions}
        self.timings = _Timings()
        # From the end of the submission: however long submitting takes (thousands of waiting
        # threads slow it down), the node gets its whole time. Waits begun before then are unbounded.
        self.timeout = timeout
        self.deadline = math.inf
        self.all_done = threading.Event()
        self._lock = threading.Lock()
        self.started = self.first = math.nan
        self.cutoff: float | None = None
        self.keys: dict[str, tuple[str, int]] = {}  # job ID -> (session, index)
        self.heard: dict[str, float] = {}  # job ID -> when its done notification arrived (listen)
        self._pubsub = None
        if waiters == "listen":
            self.left = wl.jobs
            self._listen()
        else:
            self.left = len(wl.sessions)
            for item in wl.counts.items():
                threading.Thread(target=self._waiter, args=item, name="bench-waiter", daemon=True).start()

    def _left_one(self) -> None:
        with self._lock:
            self.left -= 1
            if not self.left:
                self.all_done.set()

    def _waiter(self, sid: str, count: int) -> None:
        try:
            for j in range(count):
                job_id = self.inbox[sid].get()
                left = None if math.isinf(self.deadline) else max(0.1, self.deadline - time.monotonic())
                self.timings.wait(self.client, (sid, j), job_id, left)
        finally:
            self._left_one()

    def _listen(self) -> None:
        """Subscribe (before anything is submitted) to every done notification of the namespace."""
        prefix = self.client.keys.done_channel("")
        pubsub = self.client.r.pubsub(ignore_subscribe_messages=True)

        def heard(message: dict) -> None:
            job_id = message["channel"].removeprefix(prefix)
            with self._lock:
                if job_id in self.heard:
                    return
                self.heard[job_id] = time.time()
            self._left_one()

        pubsub.psubscribe(**{prefix + "*": heard})
        pubsub.get_message(timeout=5.0)  # reads the subscription's confirmation: listening from here on
        self._pubsub = pubsub.run_in_thread(sleep_time=1.0, daemon=True)

    def _close(self) -> None:
        if self._pubsub is not None:
            self._pubsub.stop()
            self._pubsub = None

    def _collect(self) -> None:
        """Listening: read the records of the jobs heard of, for the figures and their status."""
        if not self.heard:
            return
        with self._lock:
            heard = [(job_id, seen) for job_id, seen in self.heard.items() if job_id in self.keys]
        jobs = self.client.jobs.get_many([job_id for job_id, _ in heard])
        with self.timings.lock:
            for (job_id, seen), job in zip(heard, jobs):
                if job is not None:
                    self.timings.done[self.keys[job_id]] = (job, seen)

    def submit(self) -> None:
        client, run = self.client, self.run
        queue_name = client.settings.queue
        if self.backlog:
            if self.pause:
                self.pause()
            else:
                client.app.control.cancel_consumer(queue_name, reply=True)
            # until no registration for hand-offs is live (renewed by each wait, outliving it by GRACE)
            time.sleep(client.settings.idle_wait + GRACE + 0.5)
        spent: dict[str, list[float]] = {"new": [], "existing": []}
        cpu = time.thread_time()
        self.started = self.first = time.time()
        for sid, j in self.wl.order:
            t0 = time.perf_counter()
            job_id = client.submit(self.wl.text(sid, j), sid, stream=self.stream).job_id
            spent["existing" if j else "new"].append(time.perf_counter() - t0)
            self.keys[job_id] = (sid, j)
            self.inbox[sid].put(job_id)
        run.submit_seconds = time.time() - self.first
        run.submit_cpu = time.thread_time() - cpu
        run.submit_ms = {k: 1000 * statistics.median(v) for k, v in spent.items() if v}
        self.deadline = time.monotonic() + self.timeout
        if self.backlog:
            self.started = time.time()
            if self.resume:
                self.resume()
            else:
                client.app.control.add_consumer(queue_name, reply=True)

    def measure(self, budget: float = 0) -> Run:
        """Wait until every job is done, or for ``budget`` seconds after the work was taken up."""
        until = self.deadline if not budget else min(self.deadline, time.monotonic() + budget
                                                     - (time.time() - self.started))
        finished = self.all_done.wait(max(0.0, until - time.monotonic()))
        run = self.run
        if not finished and budget:
            self.cutoff = time.time()
            run.budget = budget
        self._collect()
        self.timings.fill(run, self.wl, self.started, self.cutoff)
        if run.done_at and not run.unfinished and not run.failed:
            run.first_to_last = run.done_at[-1] - self.first
        run.errors = self.timings.errors[:5]
        if self.cutoff is None:
            self._close()
        return run

    def finish(self, run: Run) -> None:
        """After a cut: wait for the jobs still out, then count them (unfinished or failed)."""
        if self.cutoff is None:
            return
        self.all_done.wait(max(0.0, self.deadline - time.monotonic()))
        self._collect()
        with self.timings.lock:
            late = [job for job, seen in self.timings.done.values() if seen > self.cutoff]
        run.unfinished = sum(1 for job in late if job.status == "succeeded")
        run.failed = self.wl.jobs - run.jobs - run.unfinished
        run.errors = self.timings.errors[:5]
        self._close()


def burst(client: ChatClient, wl: Workload, latency: float, timeout: float, backlog: bool = False,
          waiters: str = "threads", stream: bool = False) -> Run:
    """Submit the whole workload and wait for all of it (``Burst`` without a budget)."""
    b = Burst(client, wl, latency, timeout, backlog, waiters, stream=stream)
    b.submit()
    return b.measure()


def open_loop(client: ChatClient, wl: Workload, rate: float, latency: float, timeout: float) -> Run:
    """Submit at a fixed rate whatever the replies do (open loop), a waiter per job from a pool."""
    run = Run("chatq", latency, workload=wl.shape, sessions=len(wl.sessions))
    timings = _Timings()
    t0 = time.monotonic() + 0.05
    with ThreadPoolExecutor(64, thread_name_prefix="bench-wait") as pool:
        started = time.time()
        for i, (sid, j) in enumerate(wl.order):
            pause = t0 + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            job_id = client.submit(wl.text(sid, j), sid).job_id
            pool.submit(timings.wait, client, (sid, j), job_id, timeout)
    timings.fill(run, wl, started)
    run.errors = timings.errors[:5]
    run.check = check_sessions(client, wl)
    return run


def delete_namespace(r: redis.Redis, namespace: str) -> int:
    keys = list(r.scan_iter(f"{namespace}:*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i:i + 500])
    return len(keys)


def delete_job_records(r: redis.Redis, namespace: str) -> int:
    """Delete the namespace's job records, keeping sessions, so their memory shows as a delta."""
    keys = list(r.scan_iter(Keys(namespace).job_pattern, count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i:i + 500])
    return len(keys)
