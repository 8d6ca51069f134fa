"""The Celery app: JSON only, late acks, a threads pool sized for I/O-bound LLM calls.

Celery delivers wake-ups only; order and exactly-once history come from ``session_queue``.
"""

from __future__ import annotations

from celery import Celery

from .settings import Settings, get_settings

RUN_SESSION = "chatq.run_session"


def make_app(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    app = Celery("chatq", broker=s.broker, include=["chatq.tasks.chat_tasks"])
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
        worker_concurrency=s.concurrency,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_pool_limit=max(10, s.concurrency // 4),
        broker_transport_options={"visibility_timeout": s.visibility_timeout},
        redis_max_connections=s.concurrency + 32,
    )
    return app


app = make_app()
