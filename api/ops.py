"""Operations endpoints: health for probes, unauthenticated (it names nothing); Prometheus metrics
behind a key of their own (see ``chatq.api.auth.MetricsGate``)."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse

from .auth import metrics_access
from .deps import Svc
from .errors import responses
from .metrics import CONTENT_TYPE
from .schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health,
            responses={503: {"model": Health, "description": "Redis or every worker is down."}})
def healthz(svc: Svc) -> JSONResponse:
    """Redis answers and some worker is alive (see `chatq.api.health`)."""
    client = svc.tenants.client(None)
    try:
        redis_ok = bool(client.r.ping())
    except redis.RedisError:
        redis_ok = False
    try:
        workers_ok = redis_ok and svc.workers.alive()
    except Exception:  # a broker or Redis failure means: no worker we can reach
        workers_ok = False
    health = Health(status="ok" if redis_ok and workers_ok else "unavailable", redis=redis_ok, workers=workers_ok)
    return JSONResponse(health.model_dump(), status_code=200 if health.status == "ok" else 503)


@router.get("/metrics", response_class=Response, dependencies=[Depends(metrics_access)],
            responses={200: {"description": "Prometheus text format.", "content": {"text/plain": {}}},
                       **responses(401)})
def metrics(svc: Svc) -> Response:
    """Every tenant's queue depths and submissions: `CHATQ_METRICS_KEY` as the bearer key."""
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)
