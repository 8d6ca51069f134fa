"""chatq's worker, the Celery way: the one task, and the signals that start and stop the runtime.

``celery -A chatq.worker worker`` finds ``app`` here (Celery looks in ``<package>.celery``), and
``chatq worker`` starts this same app, so both start the same way: at ``worker_init``, before the
worker consumes, each worker process builds its ``Runtime`` (an asyncio loop that runs up to
``-c``/``CHATQ_CONCURRENCY`` sessions at once), waits for Redis if it is not up yet, registers its
agents, starts the sweeper, the lease keeper and the hand-off listener. ``-c`` sizes the runtime;
Celery's own pool gets ``FEEDERS`` threads, which only hand sessions to the loop. At
``worker_shutting_down`` (warm or cold) the runtime stops taking sessions; at ``worker_shutdown``,
once Celery's pool has stopped, running turns finish and each session's remaining FIFO is released
to other workers. Any worker that can run ``chatq.run_session`` (this app, or an app of your own that
includes this module) gets that start-up.

The pool must be ``threads`` (the app's default) or ``solo``: a forking or green-thread pool is
refused at start-up, since the loop's thread started here would not survive a fork and redis-py
blocks green threads.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Any, NoReturn

from celery import Celery, concurrency
from celery.signals import worker_init, worker_shutdown, worker_shutting_down

from chatq.tasks import tracing
from chatq.tasks.celery_app import FEEDERS, FEEDING, RUN_SESSION, make_app
from chatq.tasks.errors import ChatQError
from chatq.tasks.redis_pool import RedisUnusable, is_redis_url, wait_for_redis
from chatq.tasks.settings import Settings, get_settings
from chatq.tasks.wakeups import WakePublisher

from .runtime import Runtime
from .tools import ToolImportError

POOLS = ("threads", "solo")
"""Pools whose tasks run in the process that started the runtime."""

app: Celery = make_app(get_settings())

_runtime: Runtime | None = None
"""This process's runtime, built at ``worker_init``: a task has no other way to reach it."""


@app.task(name=RUN_SESSION)
def run_session(session_id: str, job_id: str | None = None, namespace: str | None = None) -> bool:
    """Wake-up for one session: hand it to the runtime, which drains its FIFO if nobody else holds
    it. ``job_id``: the job it was sent for (the head the first take expects). Returns at once,
    unless the process is full: then it waits for room, and the broker keeps the rest."""
    if _runtime is None:
        raise RuntimeError("chatq's runtime was not started in this process: start workers with "
                           "`celery -A chatq.worker worker` or `chatq worker` (see worker_init)")
    return _runtime.accept(session_id, namespace, job_id)


def pool_name(pool_cls: Any) -> str:
    """The alias of a worker's pool (``threads``, ``prefork``...), whether given as a name or a class."""
    cls = concurrency.get_implementation(pool_cls)
    target = f"{cls.__module__}:{cls.__qualname__}"
    return next((alias for alias, path in concurrency.ALIASES.items() if path == target), target)


def _refuse(message: str) -> NoReturn:
    """Stop the start-up with one line and exit code 2: Celery logs and ignores a handler's exception."""
    print(f"error: worker cannot start: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def start(worker: Any) -> Runtime:
    """Build and start this process's runtime for a worker about to consume; what ``worker_init`` runs."""
    global _runtime
    pool = pool_name(worker.pool_cls)
    if pool not in POOLS:
        _refuse(f"the {pool} pool cannot run chatq's runtime; use -P threads (chatq's default) "
                "or -P solo, and add processes rather than forking")
    settings: Settings = get_settings()
    if isinstance(worker.concurrency, int):  # -c N, else the app's worker_concurrency (CHATQ_CONCURRENCY)
        settings = settings.model_copy(update={"concurrency": worker.concurrency})
    # -c sizes the runtime; Celery's pool only feeds it (read by the pool and the consumer after this).
    worker.concurrency = FEEDERS
    worker.app.conf.update(FEEDING)
    # Hand-offs serve the first queue it consumes; sessions on any other come by Celery message.
    queue = next(iter(worker.app.amqp.queues.consume_from or {}), None) or settings.queue
    try:  # no Redis needed yet: agents whose tools do not import fail at once
        runtime = Runtime(settings, WakePublisher(worker.app, settings.queue), queue)
    except (ToolImportError, ChatQError) as exc:
        _refuse(str(exc))
    try:  # a worker started before its Redis waits for it instead of dying
        wait_for_redis(settings.redis_url)
        if settings.broker != settings.redis_url and is_redis_url(settings.broker):
            wait_for_redis(settings.broker, what="the broker's Redis")
    except RedisUnusable as exc:
        _refuse(str(exc))
    try:
        runtime.start()
    except Exception as exc:  # Celery would log it and consume anyway, with no sweeper: never that
        traceback.print_exc()
        _refuse(f"{type(exc).__name__}: {exc}")
    _runtime = runtime
    # A wake-up is not a job: Celery's two INFO lines per task would be most of a worker's log.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).getEffectiveLevel()))
    model = "embedded offline" if settings.offline else settings.model
    print(f"chatq worker: up to {settings.concurrency} sessions at once, pool {pool}, queue {queue}, "
          f"model {model}", file=sys.stderr, flush=True)
    return runtime


@worker_init.connect
def _on_worker_init(sender: Any = None, **_: object) -> None:
    if sender is not None and RUN_SESSION in sender.app.tasks:
        start(sender)


@worker_shutting_down.connect
def _on_shutting_down(**_: object) -> None:
    """Warm (or cold) shutdown begins: take no more sessions (never blocks: a signal handler)."""
    if _runtime is not None:
        _runtime.stop()


@worker_shutdown.connect
def _on_shutdown(**_: object) -> None:
    """Celery's pool has stopped: let running turns finish, release every other queued turn."""
    if _runtime is not None:
        _runtime.stop()
        _runtime.join()
        tracing.flush()  # the last jobs' spans, if traces are on
