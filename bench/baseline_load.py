"""Drive the baseline the way its user would: ``chat.delay(...)``, then ``.get()``.

Celery's result consumer shares one pub/sub connection per process and is not safe to drive from
several threads, so one thread does all the ``.delay()`` and ``.get()`` calls (as a script would).
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections import deque
from types import ModuleType

from celery.exceptions import TimeoutError as CeleryTimeout

from .stats import Run
from .workload import Check, Workload, check, text


def load(env: dict[str, str]) -> ModuleType:
    """Import ``bench.baseline_app`` configured like the worker (it reads the environment)."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("BENCH_BASELINE_")})
    return importlib.import_module("bench.baseline_app")


def _record(run: Run, created: float, out: dict, seen: float) -> None:
    run.jobs += 1
    run.done_at.append(seen)
    run.to_start.append(out["started_at"] - created)
    run.to_visible.append(seen - out["finished_at"])


def check_sessions(app: ModuleType, wl: Workload) -> Check:
    total = Check()
    for sid, count in wl.counts.items():
        raw = app.store.get(app.history_key(sid))
        actual = [(m["role"], m["content"]) for m in json.loads(raw)] if raw else []
        total.add(check(sid, count, actual))
    return total


def burst(app: ModuleType, wl: Workload, latency: float, timeout: float) -> Run:
    """All ``.delay()`` calls first, then ``.get()`` in order; the caller checks the sessions."""
    run = Run("baseline", latency, sessions=len(wl.sessions))
    started = time.time()
    deadline = time.monotonic() + timeout
    sent = [(time.time(), app.chat.delay(sid, text(sid, j))) for sid, j in wl.order]
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


def open_loop(app: ModuleType, wl: Workload, rate: float, latency: float, timeout: float) -> Run:
    """Submit at a fixed rate; between submissions, collect whatever finished, oldest first."""
    run = Run("baseline", latency, sessions=len(wl.sessions))
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
        result = app.chat.delay(sid, text(sid, j))
        pending.append((created, result))
        ids.append(result.id)
    collect(time.monotonic() + timeout)
    run.failed = wl.jobs - run.jobs
    run.elapsed = time.time() - started
    run.check = check_sessions(app, wl)
    run.ids = ids
    return run
