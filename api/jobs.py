"""Submitting messages and following their jobs: submit (202 + Location), poll or long-poll, cancel."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from chatq.tasks.errors import InvalidRequest, JobNotFound, WaitTimeout
from chatq.tasks.models import Job

from .auth import CurrentTenant, Tenant
from .deps import Services, Svc
from .errors import responses
from .quota import check_quota
from .schemas import ChatIn, JobId, MessageIn, SessionId, known_id

router = APIRouter(prefix="/v1", tags=["jobs"], responses=responses(401, 422, 503))

RETRY_AFTER = "1"
_LOCATION = {"Location": {"description": "Where to poll the job.", "schema": {"type": "string"}}}
_RETRY = {"Retry-After": {"description": "Seconds to wait before polling again (while unfinished).",
                          "schema": {"type": "string"}}}


def _hint(response: Response, job: Job) -> Job:
    if not job.status.finished:
        response.headers["Retry-After"] = RETRY_AFTER
    return job


def checked_callback(svc: Services, tenant: Tenant, url: object | None) -> str | None:
    """A callback URL needs the tenant's signing secret, else InvalidRequest; the client checks the
    destination itself, as it does for every caller."""
    if url is None:
        return None
    if svc.webhooks.settings.secret_for(tenant.name) is None:
        raise InvalidRequest("callback_url needs webhook signing: the operator sets CHATQ_WEBHOOK_SECRET "
                             "or CHATQ_WEBHOOK_SECRETS")
    return str(url)


def _submit(svc: Services, tenant: Tenant, body: MessageIn, session_id: str | None,
            request: Request, response: Response) -> Job:
    with svc.metrics.submission(tenant.label):
        callback = checked_callback(svc, tenant, body.callback_url)
        check_quota(tenant.client, svc.settings.max_active_jobs)
        job = tenant.client.submit(body.message, session_id, body.agent, body.idempotency_key, body.metadata,
                                   body.on_busy, callback_url=callback, session_ttl=body.session_ttl)
    response.headers["Location"] = str(request.url_for("get_job", job_id=job.job_id))
    return _hint(response, job)


_SUBMIT = dict(
    status_code=202, response_model=Job,
    responses={202: {"description": "Queued; poll the Location.", "headers": {**_LOCATION, **_RETRY}},
               **responses(409, 413, 429)},
)


@router.post("/sessions/{session_id}/messages", **_SUBMIT)
def post_message(session_id: SessionId, body: MessageIn, tenant: CurrentTenant, svc: Svc,
                 request: Request, response: Response) -> Job:
    """Queue a message behind the session's earlier ones; the session is created on first use."""
    return _submit(svc, tenant, body, session_id, request, response)


@router.post("/chat", **_SUBMIT)
def post_chat(body: ChatIn, tenant: CurrentTenant, svc: Svc, request: Request, response: Response) -> Job:
    """Queue a message; without `session_id` it starts a new session."""
    return _submit(svc, tenant, body, body.session_id, request, response)


@router.get("/jobs/{job_id}", response_model=Job,
            responses={200: {"headers": _RETRY}, **responses(404)})
async def get_job(job_id: JobId, tenant: CurrentTenant, svc: Svc, response: Response,
                  wait: Annotated[float, Query(ge=0, allow_inf_nan=False, description=(
                      "Seconds to wait for the job to finish (long poll); capped by CHATQ_MAX_WAIT_SECONDS."))] = 0,
                  ) -> Job:
    """The job as `chatq get` prints it; `Retry-After` while it is unfinished."""
    client = tenant.client
    job = await run_in_threadpool(client.get, known_id(job_id, "job"))
    if job is None:
        raise JobNotFound(f"unknown or expired job: {job_id}")
    # With every long-poll thread busy, answer at once rather than queue: the client polls again.
    if not job.status.finished and wait > 0 and svc.long_polls.available_tokens >= 1:
        timeout = min(wait, svc.settings.max_wait_seconds)
        try:
            job = await anyio.to_thread.run_sync(client.wait, job_id, timeout, limiter=svc.long_polls)
        except WaitTimeout:
            job = await run_in_threadpool(client.get, job_id) or job
    return _hint(response, job)


@router.post("/jobs/{job_id}/cancel", response_model=Job, responses=responses(404, 409))
def cancel_job(job_id: JobId, tenant: CurrentTenant, svc: Svc) -> Job:
    """Cancel a queued job; the session's later messages go on. 409 once it has started; repeating a
    cancel returns the cancelled job."""
    job = tenant.client.cancel(known_id(job_id, "job"))
    svc.webhooks.request_delivery(tenant.client.r, tenant.client.keys, job.job_id)
    return job
