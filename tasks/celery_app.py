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

from urllib.parse import urlsplit

from celery import Celery
from kombu import Exchange, Queue

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


AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
"""Broker URL schemes of RabbitMQ (kombu's py-amqp transport)."""


def is_amqp(broker_url: str) -> bool:
    return urlsplit(broker_url).scheme in AMQP_SCHEMES


def quorum_queue(name: str) -> Queue:
    """chatq's queue on RabbitMQ: a durable quorum queue, replicated and safe across a node's loss,
    where a classic queue is neither. Bound to a direct exchange of its own name, as Celery binds a
    queue it creates itself, so only the queue's type differs from what earlier versions declared
    (a queue of that name declared classic must be deleted first: RabbitMQ refuses to redeclare it)."""
    return Queue(name, Exchange(name, "direct"), routing_key=name, durable=True,
                 queue_arguments={"x-queue-type": "quorum"})


def quorum_settings(settings: Settings) -> dict[str, Any]:
    """Celery settings for a RabbitMQ broker: the app's queue is a quorum queue, and so is any other
    a worker is told to consume (``-Q``); the prefetch is per consumer (``worker_detect_quorum_queues``
    turns global QoS off, which quorum queues do not support). Nothing for other brokers."""
    if not is_amqp(settings.broker):
        return {}
    return {
        "task_queues": [quorum_queue(settings.queue)],
        "task_create_missing_queue_type": "quorum",
        "worker_detect_quorum_queues": True,
    }


REDIS_BROKER_OPTIONS = {"ack_emulation": False}
"""kombu's Redis transport options for chatq: no acknowledgement emulation.

With it (kombu's default) every delivery is also written to an ``unacked`` hash and index and every
ack removes it again, so that a dead consumer's messages come back after ``visibility_timeout``.
chatq needs none of that: a wake-up only says "this session has work", and a session whose wake-up
is lost (its worker SIGKILLed while the wake-up waited in the process) has queued work and no
lease, which the sweeper wakes within a few intervals. A warm shutdown loses nothing either: the
process hands back the wake-ups it still holds (kombu restores them as the channel closes; the
runtime re-wakes those it refused). Without it a backlog's new sessions cost the workers 13-15% less CPU per
job (``bench/RESULTS.md``), and a reconnect has no unacked messages to restore, the step of kombu's
Redis transport that can kill a worker (``broker_transport``)."""


def broker_options(broker: str) -> dict[str, Any]:
    """Transport options for ``broker`` (kombu's URL): chatq's for a Redis or Sentinel broker."""
    return dict(REDIS_BROKER_OPTIONS) if urlsplit(broker).scheme in ("redis", "rediss", "sentinel") else {}


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
        broker_transport_options={**broker_options(broker), **sentinel_options},
        # -c's default; a worker's runtime takes it and gives Celery's own pool FEEDERS threads.
        worker_concurrency=s.concurrency,
        **FEEDING,
        **quorum_settings(s),
    )
    if transport := transport_for(broker):
        app.conf.broker_transport = transport
    return app
