"""The FastAPI app factory: ``create_app()``; ``chatq serve`` runs it on uvicorn."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from chatq.tasks import tracing
from chatq.tasks.settings import Settings, get_settings
from chatq.tasks.webhooks import WebhookSender

from . import batches, console, errors, jobs, ops, sessions
from .auth import KeyRing, MetricsGate
from .body_limit import BodyLimit
from .config import ApiSettings, get_api_settings
from .deps import Services
from .health import WorkerProbe
from .metrics import LatencyMiddleware, Metrics
from .streams import StreamRedis
from .tenants import Tenants

log = logging.getLogger("uvicorn.error")  # formatted like the server's own start-up lines


def create_app(api_settings: ApiSettings | None = None, settings: Settings | None = None) -> FastAPI:
    """The API over the core's namespace; both settings default to the environment (tests pass theirs)."""
    api = api_settings or get_api_settings()
    core = settings or get_settings()
    tracing.configure("api")  # traces of submissions over HTTP, if OTEL_* variables ask for them
    tenants = Tenants(core)
    keyring = KeyRing(api.api_keys, api.operator_keys)
    names: list[str | None] = list(api.tenants) if api.tenants else [None]
    metrics = Metrics(tenants, names, api.max_active_jobs)
    gate = MetricsGate(api, keyring)
    services = Services(
        settings=api, tenants=tenants, keyring=keyring, metrics=metrics, metrics_gate=gate,
        webhooks=WebhookSender(core), workers=WorkerProbe(tenants.client(None)),
        long_polls=anyio.CapacityLimiter(api.max_long_polls),
        streams=StreamRedis(core, api.stream_connections),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if keyring.open:
            log.warning("CHATQ_API_KEYS is not set: the API is open to anyone who can reach it, as one tenant "
                        "(fine for local use; set keys before exposing it)")
        else:
            log.info("API keys configured for %d tenant(s)", len(names))
        if api.operator_keys and keyring.open:
            log.warning("CHATQ_OPERATOR_KEYS is set without CHATQ_API_KEYS: the console is open to all anyway")
        if not gate.open and api.metrics_key is None:
            log.warning("/metrics answers 401: set CHATQ_METRICS_KEY (its own bearer key) or CHATQ_METRICS_OPEN=true")
        yield
        await app.state.services.streams.close()  # the app's services, which tests may have swapped in

    app = FastAPI(
        title="chatq", version="1", lifespan=lifespan,
        description="Session-ordered chat jobs for LLM agents: submit, poll, long-poll or stream (Server-Sent "
                    "Events), cancel or stop; sessions; batches; webhooks on completion.",
    )
    app.state.services = services
    errors.install(app)
    for module in (jobs, sessions, batches, ops):
        app.include_router(module.router)
    console.install(app)  # the web console at /ui, on the same keys and tenants
    batch_prefix = batches.router.prefix
    app.add_middleware(BodyLimit, limit_for=lambda path: (
        api.max_batch_bytes if path.startswith(batch_prefix) else api.max_body_bytes))
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    return app
