"""Operations endpoints, unauthenticated for probes and scrapers: health and Prometheus metrics."""

from __future__ import annotations

import redis
from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from .deps import Svc
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


@router.get("/metrics", response_class=Response,
            responses={200: {"description": "Prometheus text format.", "content": {"text/plain": {}}}})
def metrics(svc: Svc) -> Response:
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE)
