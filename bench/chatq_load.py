"""Drive chatq the way an application does: ``ChatClient.submit`` each message, ``ChatClient.wait``
for each job, then read every session back and check it.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis

from chatq.tasks.client import ChatClient
from chatq.tasks.keys import Keys
from chatq.tasks.models import Job
from chatq.tasks.settings import Settings

from .stats import Run
from .workload import Check, Workload, check, text


def make_client(settings: Settings, waiters: int) -> ChatClient:
    """A stock ChatClient whose Redis pool fits ``waiters`` concurrent waits: each ``wait`` holds
    one pool connection for its whole duration."""
    pool = max(settings.redis_max_connections, waiters + 32)
    return ChatClient(settings=settings.model_copy(update={"redis_max_connections": pool}))


class _Timings:
    """Collects (job, time the waiting client had it) per (session, index), thread-safely."""

    def __init__(self) -> None:
        self.done: dict[tuple[str, int], tuple[Job, float]] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()

    def wait(self, client: ChatClient, key: tuple[str, int], job_id: str, timeout: float) -> None:
        try:
            job = client.wait(job_id, timeout)
            seen = time.time()
            with self.lock:
                self.done[key] = (job, seen)
        except Exception as exc:  # reported as a failed job, never hangs the run
            with self.lock:
                self.errors.append(f"{key}: {exc!r}")

    def fill(self, run: Run, wl: Workload, started: float) -> None:
        run.jobs = sum(1 for job, _ in self.done.values() if job.status == "succeeded")
        run.failed = wl.jobs - run.jobs
        if self.done:
            run.elapsed = max(seen for _, seen in self.done.values()) - started
        run.done_at = sorted(seen for job, seen in self.done.values() if job.status == "succeeded")
        for (sid, j), (job, seen) in self.done.items():
            if job.started_at is None or job.finished_at is None:
                continue
            ready = max(job.created_at.timestamp(), started)  # a backlog's jobs are ready when taken up
            before = self.done.get((sid, j - 1))
            if before and before[0].finished_at:  # queued behind its own session's previous turn
                ready = max(ready, before[0].finished_at.timestamp())
            run.to_start.append(job.started_at.timestamp() - ready)
            run.to_visible.append(seen - job.finished_at.timestamp())


def check_sessions(client: ChatClient, wl: Workload) -> Check:
    total = Check()
    for sid, count in wl.counts.items():
        session = client.get_session(sid)
        actual = [(m.role, m.content) for m in session.messages] if session else []
        total.add(check(sid, count, actual))
    return total


def burst(client: ChatClient, wl: Workload, latency: float, timeout: float, backlog: bool = False) -> Run:
    """Submit the whole workload as fast as one producer can; one waiting thread per session.

    ``backlog``: the workers stop consuming while the workload is submitted and start again at
    once, as after an outage or a deploy: how fast a node takes up queued sessions, and how many
    calls it holds in flight when the producer is not what limits it. The caller checks the
    sessions (``check_sessions``) once the measured part is over.
    """
    run = Run("chatq" if not backlog else "chatq backlog", latency, sessions=len(wl.sessions))
    inbox: dict[str, queue.Queue] = {sid: queue.Queue() for sid in wl.sessions}
    timings = _Timings()
    deadline = time.monotonic() + timeout

    def waiter(sid: str, count: int) -> None:
        for j in range(count):
            job_id = inbox[sid].get()
            timings.wait(client, (sid, j), job_id, max(0.1, deadline - time.monotonic()))

    threads = [threading.Thread(target=waiter, args=item, daemon=True) for item in wl.counts.items()]
    for t in threads:
        t.start()
    queue_name = client.settings.queue
    if backlog:
        client.app.control.cancel_consumer(queue_name, reply=True)
        time.sleep(client.settings.idle_wait + 0.5)  # until no runner thread waits for a hand-off
    started = time.time()
    for sid, j in wl.order:
        inbox[sid].put(client.submit(text(sid, j), sid).job_id)
    run.submit_seconds = time.time() - started
    if backlog:
        started = time.time()
        client.app.control.add_consumer(queue_name, reply=True)
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    timings.fill(run, wl, started)
    run.errors = timings.errors[:5]
    return run


def open_loop(client: ChatClient, wl: Workload, rate: float, latency: float, timeout: float) -> Run:
    """Submit at a fixed rate whatever the replies do (open loop), a waiter per job from a pool."""
    run = Run("chatq", latency, sessions=len(wl.sessions))
    timings = _Timings()
    t0 = time.monotonic() + 0.05
    with ThreadPoolExecutor(64, thread_name_prefix="bench-wait") as pool:
        started = time.time()
        for i, (sid, j) in enumerate(wl.order):
            pause = t0 + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            job_id = client.submit(text(sid, j), sid).job_id
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
