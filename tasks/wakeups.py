"""Wake-ups: the one way anything tells Celery that a session has queued work.

A wake-up is ``chatq.run_session(session_id, job_id=..., namespace=...)``, JSON, with no message
content or secrets; ``job_id`` names the head the woken runner's first take expects. Producers publish one when the submit script found no idle runner thread to hand the
session to; the sweeper and warm shutdown publish them for sessions nobody holds. Whoever
publishes decides what a failed publish means: the job is safely queued in Redis either way, and
the sweeper wakes any session with queued work and no lease.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from celery import Celery

from .celery_app import RUN_SESSION, make_app
from .settings import Settings

BATCH = 2000
"""Wake-ups per pipelined flush when publishing many."""


class WakePublisher:
    def __init__(self, app: Celery, queue: str):
        self.app = app
        self.queue = queue

    def wake(self, session_id: str, namespace: str, job_id: str | None = None) -> None:
        self.app.send_task(RUN_SESSION, args=[session_id], kwargs={"job_id": job_id, "namespace": namespace},
                           queue=self.queue)

    def wake_many(self, sessions: Iterable[tuple[str, str | None]], namespace: str) -> None:
        """One wake-up per ``(session_id, job_id)``, published in bulk.

        One producer, and kombu's ``Producer.batch`` pipelines the Redis transport's pushes (other
        transports publish one by one); precomputed reprs spare Celery's ``saferepr``. Measured in
        ``bench/batch_submit.py``: this cuts the wake-ups' cost by about 3x.
        """
        app = self.app
        with app.producer_or_acquire() as producer, producer.batch(max_size=BATCH):
            for session_id, job_id in sessions:
                args, kwargs = [session_id], {"job_id": job_id, "namespace": namespace}
                app.send_task(RUN_SESSION, args=args, kwargs=kwargs, queue=self.queue, producer=producer,
                              argsrepr=repr(args), kwargsrepr=repr(kwargs))

    @classmethod
    def shared(cls, settings: Settings) -> WakePublisher:
        """The process's publisher for this broker and queue.

        A Celery app owns a pool of broker connections, so every client in a process (a web app
        may make one per request; the API one per tenant) shares one rather than opening its own.
        """
        key = (settings.broker, settings.queue)
        with _lock:
            found = _shared.get(key)
            if found is None:
                found = _shared[key] = cls(make_app(settings), settings.queue)
            return found


_shared: dict[tuple[str, str], WakePublisher] = {}
_lock = threading.Lock()
