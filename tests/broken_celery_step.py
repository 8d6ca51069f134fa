"""A tool module whose import breaks the worker's Celery consumer, as an unrecoverable error would.

An agents file naming ``tests.broken_celery_step:noop`` makes the worker import it at start-up;
the consumer step it registers raises when Celery starts it, which Celery treats as unrecoverable.
"""

from __future__ import annotations

from celery import bootsteps

from chatq.worker.celery import app


class _Broken(bootsteps.StartStopStep):
    def start(self, parent: object) -> None:
        raise RuntimeError("a consumer step that cannot start (test)")


app.steps["consumer"].add(_Broken)


def noop() -> str:
    return "noop"
