"""Celery task wiring, kept thin: the work lives in ``chatq.worker.runner``."""

from __future__ import annotations

from celery.signals import worker_shutting_down

from .celery_app import RUN_SESSION, app


@app.task(name=RUN_SESSION, bind=True)
def run_session(self, session_id: str, job_id: str | None = None, namespace: str | None = None) -> int:
    """Wake-up for one session: drain its FIFO if nobody else holds it, then serve sessions handed
    to this thread directly. ``job_id``: the job it was sent for (the head the first take expects).
    Returns jobs run."""
    from chatq.worker.runner import get_runner

    queue = (self.request.delivery_info or {}).get("routing_key")
    return get_runner().serve(session_id, namespace, queue, job_id)


@worker_shutting_down.connect
def _stop_draining(**_: object) -> None:
    """Warm shutdown: finish the running turns, hand every session's remaining queue to other workers."""
    from chatq.worker.runner import get_runner

    get_runner().stop()
