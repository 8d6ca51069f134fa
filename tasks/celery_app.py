"""The Celery app: JSON only, late acks, a small threads pool that feeds the worker's asyncio runtime.

Celery delivers wake-ups only; order and exactly-once history come from ``session_machine``. A broker
outage of any length is waited out: the consumer reconnects forever, and a Redis broker uses
``broker_transport``'s fixed channel so the reconnect itself cannot kill the worker. The base only
configures apps; the task and the worker's start-up live in ``chatq.worker.celery``, which an app
names in ``include`` (a string: the base never imports the worker).
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from .broker_transport import transport_for
from .redis_pool import celery_broker
from .settings import Settings

RUN_SESSION = "chatq.run_session"
WORKER_MODULE = "chatq.worker.celery"


class _SetOnPurpose(logging.Filter):
    """Celery warns on every reconnect that this setting's default will change; chatq sets it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "worker_cancel_long_running_tasks_on_connection_loss" not in record.getMessage()


logging.getLogger("py.warnings").addFilter(_SetOnPurpose())  # Celery's worker logs warnings there


FEEDERS = 8
"""Celery pool threads in a chatq worker: they only hand sessions to the worker's runtime, whose own
size is ``-c``/``CHATQ_CONCURRENCY`` (``chatq.worker.runtime``)."""

FEEDING = {
    "broker_pool_limit": 10,
    "redis_max_connections": FEEDERS + 32,
}
"""Broker connection limits for a process whose Celery pool has ``FEEDERS`` threads."""


def make_app(settings: Settings) -> Celery:
    s = settings
    # A redis+sentinel:// broker is kombu's sentinel:// URL plus the master's name as an option.
    broker, sentinel_options = celery_broker(s.broker)
    app = Celery("chatq", broker=broker, include=[WORKER_MODULE])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=s.queue,
        task_routes={RUN_SESSION: {"queue": s.queue}},
        worker_pool="threads",
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # retry forever: an outage costs time, never the worker
        # A running job keeps running through a broker outage: its commit is fenced by the session lease.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={"visibility_timeout": s.visibility_timeout, **sentinel_options},
        # -c's default; a worker's runtime takes it and gives Celery's own pool FEEDERS threads.
        worker_concurrency=s.concurrency,
        **FEEDING,
    )
    if transport := transport_for(broker):
        app.conf.broker_transport = transport
    return app
