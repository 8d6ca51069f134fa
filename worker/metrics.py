"""A worker process's Prometheus metrics, served on ``CHATQ_METRICS_PORT`` (one port per process:
``chatq worker -p N`` gives process i the port plus i).

Counted where the work happens, so every job counts once whichever way it reached the process (a
Celery wake-up, a hand-off, a sweep): Flower and ``celery inspect`` see only Celery's wake-ups. Each
update is an increment or an observation in this process's memory (about a microsecond); nothing
is read from Redis to serve a scrape.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class WorkerMetrics:
    """The metrics of one worker process, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        self.queue_wait = Histogram("chatq_job_queue_wait_seconds", "From submission to the job's first start.",
                                    ["agent"], buckets=SECONDS, registry=r)
        self.run_time = Histogram("chatq_job_run_seconds", "From a job's start on this process to its commit.",
                                  ["agent", "status"], buckets=SECONDS, registry=r)
        self.jobs = Counter("chatq_jobs", "Jobs this process finished, by final status and error type.",
                            ["agent", "status", "error"], registry=r)
        self.cancels = Counter("chatq_cancels", "Running jobs stopped on request, by how (keep, rollback).",
                               ["mode"], registry=r)
        self.tokens = Counter("chatq_tokens", "Tokens of finished jobs, by agent, model and kind.",
                              ["agent", "model", "kind"], registry=r)
        self.provider_call = Histogram("chatq_provider_call_seconds", "One provider call, answered or not.",
                                       ["model", "outcome"], buckets=SECONDS, registry=r)
        self.first_token = Histogram("chatq_provider_first_token_seconds",
                                     "From a provider call's start to its first text.", ["model"],
                                     buckets=SECONDS, registry=r)
        self.retries = Counter("chatq_provider_retries", "Provider calls retried in place, by cause.",
                               ["model", "cause"], registry=r)
        self.calls_in_flight = Gauge("chatq_provider_calls_in_flight", "Provider calls open now.", registry=r)
        self.sessions = Gauge("chatq_sessions_running", "Sessions this process runs now.", registry=r)
        self.room = Gauge("chatq_session_room", "Sessions this process could still take (idle capacity).",
                          registry=r)

    def watch(self, running: Callable[[], int], capacity: int) -> None:
        """The gauges of sessions running and room, read at scrape time from the runtime."""
        self.sessions.set_function(lambda: running())
        self.room.set_function(lambda: max(0, capacity - running()))

    def serve(self, port: int, host: str) -> None:
        """Serve ``/metrics`` from a daemon thread."""
        start_http_server(port, host, registry=self.registry)
