"""chatq's worker, the Celery way: the one task, and the signals that start and stop the runner.

``celery -A chatq.worker worker`` finds ``app`` here (Celery looks in ``<package>.celery``), and
``chatq worker`` starts this same app, so both start the same way: at ``worker_init``, before
the worker consumes, each worker process builds its ``SessionRunner`` from the settings and the
worker's own flags (``-c``), waits for Redis if it is not up yet, registers its agents, starts the
sweeper and the lease keeper; at ``worker_shutting_down`` (warm or cold), the runner stops taking
turns and releases each session's remaining FIFO to other workers. Any worker that can run
``chatq.run_session`` (this app, or an app of your own that includes this module) gets that start-up.

Runner threads make LLM calls, so the pool must be ``threads`` (the app's default) or ``solo``;
a forking or green-thread pool is refused at start-up, since the threads started here would not
survive a fork and redis-py blocks green threads.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any, NoReturn

from celery import Celery, concurrency
from celery.signals import worker_init, worker_shutting_down

from chatq.tasks.celery_app import RUN_SESSION, make_app, sized_for
from chatq.tasks.errors import ChatQError
from chatq.tasks.redis_pool import RedisUnusable, get_redis, is_redis_url, wait_for_redis
from chatq.tasks.settings import Settings, get_settings
from chatq.tasks.wakeups import WakePublisher

from .runner import SessionRunner
from .tools import ToolImportError

POOLS = ("threads", "solo")
"""Pools whose tasks run in the process that started the runner."""

app: Celery = make_app(get_settings())

_runner: SessionRunner | None = None
"""This process's runner, built at ``worker_init``: a task has no other way to reach it."""


@app.task(name=RUN_SESSION, bind=True)
def run_session(self, session_id: str, job_id: str | None = None, namespace: str | None = None) -> int:
    """Wake-up for one session: drain its FIFO if nobody else holds it, then serve sessions handed
    to this thread directly. ``job_id``: the job it was sent for (the head the first take expects).
    Returns jobs run."""
    if _runner is None:
        raise RuntimeError("chatq's runner was not started in this process: start workers with "
                           "`celery -A chatq.worker worker` or `chatq worker` (see worker_init)")
    queue = (self.request.delivery_info or {}).get("routing_key")
    return _runner.serve(session_id, namespace, queue, job_id)


def pool_name(pool_cls: Any) -> str:
    """The alias of a worker's pool (``threads``, ``prefork``...), whether given as a name or a class."""
    cls = concurrency.get_implementation(pool_cls)
    target = f"{cls.__module__}:{cls.__qualname__}"
    return next((alias for alias, path in concurrency.ALIASES.items() if path == target), target)


def _refuse(message: str) -> NoReturn:
    """Stop the start-up with one line and exit code 2: Celery logs and ignores a handler's exception."""
    print(f"error: worker cannot start: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def start(worker: Any) -> SessionRunner:
    """Build and start this process's runner for a worker about to consume; what ``worker_init`` runs."""
    global _runner
    pool = pool_name(worker.pool_cls)
    if pool not in POOLS:
        _refuse(f"the {pool} pool cannot run chatq's runner threads; use -P threads (chatq's default) "
                "or -P solo, and add processes rather than forking")
    settings: Settings = get_settings()
    if isinstance(worker.concurrency, int):  # -c N, else the app's CHATQ_CONCURRENCY
        settings = settings.model_copy(update={"concurrency": worker.concurrency})
    worker.app.conf.update(sized_for(settings.concurrency))
    try:  # no Redis needed yet: agents whose tools do not import fail at once
        # Commands get the configured socket timeout, plus a hand-off wait's own time for its BLPOP.
        r = get_redis(settings.redis_url, settings.concurrency + settings.redis_max_connections,
                      settings.redis_socket_timeout + settings.idle_wait)
        runner = SessionRunner(settings, r, WakePublisher(worker.app, settings.queue))
    except (ToolImportError, ChatQError) as exc:
        _refuse(str(exc))
    try:  # a worker started before its Redis waits for it instead of dying
        wait_for_redis(settings.redis_url)
        if settings.broker != settings.redis_url and is_redis_url(settings.broker):
            wait_for_redis(settings.broker, what="the broker's Redis")
    except RedisUnusable as exc:
        _refuse(str(exc))
    try:
        runner.start()
    except Exception as exc:  # Celery would log it and consume anyway, with no sweeper: never that
        traceback.print_exc()
        _refuse(f"{type(exc).__name__}: {exc}")
    _runner = runner
    model = "embedded offline" if settings.offline else settings.model
    print(f"chatq worker: {settings.concurrency} threads, pool {pool}, queue {settings.queue}, model {model}",
          file=sys.stderr, flush=True)
    return runner


@worker_init.connect
def _on_worker_init(sender: Any = None, **_: object) -> None:
    if sender is not None and RUN_SESSION in sender.app.tasks:
        start(sender)


@worker_shutting_down.connect
def _on_shutting_down(**_: object) -> None:
    """Warm (or cold) shutdown: running turns finish, every other queued turn goes to another worker."""
    if _runner is not None:
        _runner.stop()
