"""Drive the baseline the way its user would: ``chat.delay(...)``, then ``.get()``.

Celery's result consumer shares one pub/sub connection per process and is not safe to drive from
several threads, so one thread does all the ``.delay()`` and ``.get()`` calls (as a script would).

The same task runs on three pools, each its own worker and queue: Celery's defaults (prefork, one
process per core), and the tuned plain pattern a user reaches for with I/O-bound calls: ``-P threads
-c 200`` and ``-P gevent -c 1000`` (Celery monkey-patches the process at start, so redis-py and the
SDK's sockets cooperate; the ``bench`` extra installs gevent).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass
from types import ModuleType

from celery.exceptions import TimeoutError as CeleryTimeout

from .stats import Run
from .workload import Check, Workload, check, text


# pool -> (the worker's pool options, calls it runs at once)
POOLS: dict[str, tuple[list[str], int]] = {
    "prefork": ([], os.cpu_count() or 1),
    "threads": (["-P", "threads", "-c", "200"], 200),
    "gevent": (["-P", "gevent", "-c", "1000"], 1000),
}


def load(env: dict[str, str]) -> ModuleType:
    """Import ``bench.baseline_app`` configured like the workers (it reads the environment)."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("BENCH_BASELINE_")})
    return importlib.import_module("bench.baseline_app")


@dataclass
class Baseline:
    """One baseline worker: its pool, its queue, and the app module that sends to it."""

    pool: str
    app: ModuleType
    queue: str

    @property
    def name(self) -> str:
        return "baseline" if self.pool == "prefork" else f"baseline-{self.pool}"

    @property
    def slots(self) -> int:
        return POOLS[self.pool][1]

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "bench.baseline_app", "worker", *POOLS[self.pool][0],
                "-Q", self.queue, "-n", f"{self.name}-{os.getpid()}@%h", "-l", "WARNING"]

    def send(self, session_id: str, message: str):
        """``chat.delay(...)`` to this worker's queue."""
        return self.app.chat.apply_async((session_id, message), queue=self.queue)

    def history_key(self, session_id: str) -> str:
        return self.app.history_key(session_id)


def _record(run: Run, created: float, out: dict, seen: float) -> None:
    run.jobs += 1
    run.done_at.append(seen)
    run.to_start.append(out["started_at"] - created)
    run.to_visible.append(seen - out["finished_at"])


def check_sessions(base: Baseline, wl: Workload) -> Check:
    total = Check()
    for sid, count in wl.counts.items():
        raw = base.app.store.get(base.history_key(sid))
        actual = [(m["role"], m["content"]) for m in json.loads(raw)] if raw else []
        total.add(check(sid, count, actual))
    return total


def burst(base: Baseline, wl: Workload, latency: float, timeout: float) -> Run:
    """All ``.delay()`` calls first, then ``.get()`` in order; the caller checks the sessions."""
    run = Run(base.name, latency, workload=wl.shape, sessions=len(wl.sessions))
    started = time.time()
    deadline = time.monotonic() + timeout
    cpu = time.thread_time()
    sent = [(time.time(), base.send(sid, text(sid, j))) for sid, j in wl.order]
    run.submit_cpu = time.thread_time() - cpu
    run.submit_seconds = time.time() - started
    last = started
    for created, result in sent:
        try:
            out = result.get(timeout=max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            run.errors.append(repr(exc))
            continue
        last = time.time()
        _record(run, created, out, last)
    run.failed = wl.jobs - run.jobs
    run.elapsed = last - started
    run.ids = [r.id for _, r in sent]
    return run


def open_loop(base: Baseline, wl: Workload, rate: float, latency: float, timeout: float) -> Run:
    """Submit at a fixed rate; between submissions, collect whatever finished, oldest first."""
    run = Run(base.name, latency, workload=wl.shape, sessions=len(wl.sessions))
    pending: deque = deque()
    ids = []
    started = time.time()
    t0 = time.monotonic() + 0.05

    def collect(until: float) -> None:
        while pending:
            left = until - time.monotonic()
            if left <= 0:
                return
            created, result = pending[0]
            try:
                out = result.get(timeout=left)
            except CeleryTimeout:
                return
            except Exception as exc:
                run.errors.append(repr(exc))
                pending.popleft()
                continue
            pending.popleft()
            _record(run, created, out, time.time())

    for i, (sid, j) in enumerate(wl.order):
        due = t0 + i / rate
        collect(due)
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        created = time.time()
        result = base.send(sid, text(sid, j))
        pending.append((created, result))
        ids.append(result.id)
    collect(time.monotonic() + timeout)
    run.failed = wl.jobs - run.jobs
    run.elapsed = time.time() - started
    run.check = check_sessions(base, wl)
    run.ids = ids
    return run
