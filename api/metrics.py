"""Prometheus metrics: request latency, submissions per tenant and outcome, and queue depths.

Depths are read from Redis at scrape time, not counted in this process, so they are right across
API replicas and restarts; a scrape while Redis is down reports ``chatq_redis_up 0`` instead of
failing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatq.tasks.errors import InvalidRequest, SessionBusy
from chatq.tasks.redis_pool import get_redis

from .config import OPEN_TENANT
from .errors import QuotaExceeded
from .quota import count_active
from .tenants import Tenants

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_OUTCOMES: list[tuple[type[Exception], str]] = [
    (QuotaExceeded, "quota"), (SessionBusy, "busy"), (InvalidRequest, "invalid")]


@dataclass
class Tally:
    jobs: int = 1


class _QueueCollector(Collector):
    def __init__(self, tenants: Tenants, names: list[str | None], limit: int):
        self.tenants = tenants
        self.names = names
        self.limit = limit

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("chatq_redis_up", "1 if this scrape could read Redis.")
        jobs = GaugeMetricFamily("chatq_jobs_active", "Jobs queued or running, per tenant.",
                                 labels=["tenant", "status"])
        wakeups = GaugeMetricFamily("chatq_broker_queue_depth", "Wake-ups waiting in the Celery queue (Redis broker).")
        try:
            for name in self.names:
                active = count_active(self.tenants.client(name), self.limit)
                jobs.add_metric([name or OPEN_TENANT, "queued"], active.queued)
                jobs.add_metric([name or OPEN_TENANT, "running"], active.running)
            s = self.tenants.settings
            if s.broker.startswith(("redis://", "rediss://", "unix://")):
                wakeups.add_metric([], get_redis(s.broker).llen(s.queue))
            up.add_metric([], 1)
        except redis.RedisError:
            log.warning("metrics scrape could not read Redis", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        yield from (up, jobs, wakeups)


class Metrics:
    def __init__(self, tenants: Tenants, tenant_names: list[str | None], count_limit: int = 0):
        """``count_limit`` caps each tenant's count of active jobs per scrape (the quota: beyond it,
        the exact number matters less than keeping the scrape's Lua call short)."""
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "chatq_http_request_duration_seconds", "HTTP request latency, by route template.",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.submitted = Counter(
            "chatq_jobs_submitted", "Submissions through the API, by tenant and outcome.",
            ["tenant", "outcome"], registry=self.registry,
        )
        self.registry.register(_QueueCollector(tenants, tenant_names, count_limit))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    @contextmanager
    def submission(self, tenant: str) -> Iterator[Tally]:
        """Count a submission's jobs by how it ended: accepted, or the refusal's kind."""
        tally = Tally()
        try:
            yield tally
        except Exception as exc:
            outcome = next((name for cls, name in _OUTCOMES if isinstance(exc, cls)), "error")
            self.submitted.labels(tenant, outcome).inc(tally.jobs)
            raise
        self.submitted.labels(tenant, "accepted").inc(tally.jobs)


class LatencyMiddleware:
    """Times every request under its route template (``/v1/jobs/{job_id}``), never its raw path.

    An event stream is timed to its first byte (its headers): how long it then lasts is the job's
    time, not the API's, and would drown the histogram."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500
        observed = False

        def observe() -> None:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.latency.labels(method, route, str(status)).observe(time.perf_counter() - start)

        async def sending(message: Message) -> None:
            nonlocal status, observed
            if message["type"] == "http.response.start":
                status = message["status"]
                if any(k.lower() == b"content-type" and v.startswith(b"text/event-stream")
                       for k, v in message.get("headers", ())):
                    observed = True
                    observe()
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if not observed:
                observe()
