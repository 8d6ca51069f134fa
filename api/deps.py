"""What routes share: the app's services, reached through FastAPI dependencies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import anyio
from fastapi import Depends, Request

from chatq.tasks.webhooks import WebhookSender

from .auth import KeyRing, MetricsGate
from .config import ApiSettings
from .health import WorkerProbe
from .metrics import Metrics
from .streams import StreamRedis
from .tenants import Tenants


@dataclass
class Services:
    settings: ApiSettings
    tenants: Tenants
    keyring: KeyRing
    metrics: Metrics
    metrics_gate: MetricsGate
    webhooks: WebhookSender
    workers: WorkerProbe
    long_polls: anyio.CapacityLimiter
    """Threads for long polls, apart from the default pool so waiting never starves other requests."""
    streams: StreamRedis
    """The asyncio Redis client the event streams share."""


def get_services(request: Request) -> Services:
    return request.app.state.services


Svc = Annotated[Services, Depends(get_services)]
