"""Submitting messages and following their jobs: submit (202 + Location), poll, long-poll or stream
their events (Server-Sent Events), cancel or stop."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from chatq.tasks import tracing
from chatq.tasks.errors import InvalidRequest, JobNotFound, NotCancellable, WaitTimeout
from chatq.tasks.models import Job, JobStatus

from .auth import CurrentTenant, Tenant
from .deps import Services, Svc
from .errors import responses
from .quota import check_quota
from .schemas import ChatIn, JobId, MessageIn, SessionId, known_id
from .streams import DESCRIPTION as STREAM_DESCRIPTION
from .streams import SSE_CONTENT, open_stream

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


def submit_job(svc: Services, tenant: Tenant, body: MessageIn, session_id: str | None,
            request: Request, response: Response, stream: bool = False) -> Job:
    route = request.scope["route"].path
    with tracing.serving(f"POST {route}", request.headers, {"http.request.method": "POST", "http.route": route}), \
            svc.metrics.submission(tenant.label):
        callback = checked_callback(svc, tenant, body.callback_url)
        check_quota(tenant.client, svc.settings.max_active_jobs)
        job = tenant.client.submit(body.message, session_id, body.agent, body.idempotency_key, body.metadata,
                                   body.on_busy, callback_url=callback, session_ttl=body.session_ttl,
                                   params=body.params, stream=stream or body.stream)
    response.headers["Location"] = str(request.url_for("get_job", job_id=job.job_id))
    return _hint(response, job)


MAX_SEQ = 2**63 - 1
Stream = Annotated[bool, Query(description=(
    "Answer with the job's event stream (`text/event-stream`, as `GET /v1/jobs/{job_id}/events`) instead of "
    "the queued job; the `Location` header still names the job, to resume from."))]

_SUBMIT = dict(
    status_code=202, response_model=Job,
    responses={202: {"description": "Queued; poll the Location.", "headers": {**_LOCATION, **_RETRY}},
               200: {"description": f"With `stream=true`: {STREAM_DESCRIPTION}", "content": SSE_CONTENT,
                     "headers": _LOCATION},
               **responses(409, 413, 429)},
)


async def _answer(svc: Services, tenant: Tenant, body: MessageIn, session_id: str | None, stream: bool,
                  request: Request, response: Response) -> Job | Response:
    """Submit (refusals are the usual JSON errors), then the job, or its event stream from the start."""
    job = await run_in_threadpool(submit_job, svc, tenant, body, session_id, request, response, stream)
    if not stream:
        return job
    return await open_stream(svc.streams, tenant.client.keys, job.job_id, 0,
                             headers={"Location": response.headers["Location"]})


@router.post("/sessions/{session_id}/messages", **_SUBMIT)
async def post_message(session_id: SessionId, body: MessageIn, tenant: CurrentTenant, svc: Svc,
                       request: Request, response: Response, stream: Stream = False) -> Job | Response:
    """Queue a message behind the session's earlier ones; the session is created on first use."""
    return await _answer(svc, tenant, body, session_id, stream, request, response)


@router.post("/chat", **_SUBMIT)
async def post_chat(body: ChatIn, tenant: CurrentTenant, svc: Svc, request: Request, response: Response,
                    stream: Stream = False) -> Job | Response:
    """Queue a message; without `session_id` it starts a new session."""
    return await _answer(svc, tenant, body, body.session_id, stream, request, response)


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


@router.get("/jobs/{job_id}/events", response_class=Response,
            responses={200: {"description": STREAM_DESCRIPTION, "content": SSE_CONTENT},
                       204: {"description": "Nothing can follow: the reader is past the terminal event (an "
                                            "`EventSource` reconnecting after the end stops here)."},
                       **responses(404, 410)})
async def job_events(job_id: JobId, tenant: CurrentTenant, svc: Svc,
                     after: Annotated[int, Query(ge=0, le=MAX_SEQ, description=(
                         "Send the events after this seq (0: from the first)."))] = 0,
                     last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=MAX_SEQ, description=(
                         "The last seq the reader has (an `EventSource` resends it when it reconnects): when "
                         "present it is used, and `after` ignored."))] = None) -> Response:
    """The job's events as Server-Sent Events, each once and in order, until the terminal one; resume
    after a disconnect with `Last-Event-ID` (or `?after=`). 410 once the job's log has expired (the
    job itself may still be there)."""
    start = after if last_event_id is None else last_event_id
    return await open_stream(svc.streams, tenant.client.keys, known_id(job_id, "job"), start)


@router.post("/jobs/{job_id}/cancel", response_model=Job,
             responses={200: {"description": "Cancelled: it was queued, or it was running and has already stopped."},
                        202: {"description": "It is running and asked to stop (`cancel` says how): its worker ends "
                                             "it `cancelled` within about a second; poll the job or its events."},
                        **responses(404, 409)})
def cancel_job(job_id: JobId, tenant: CurrentTenant, svc: Svc, response: Response,
               rollback: Annotated[bool, Query(description=(
                   "A running job's turn leaves no trace in the session's history; without it, the history "
                   "keeps the user's message and the reply so far, marked cancelled."))] = False) -> Job:
    """Cancel a queued job, or stop a running one. The answer says where the job is now: 200 and
    `cancelled` (a queued job at once; a running one if it stopped before the answer), or 202 and
    still `running` with `cancel` set, which its worker ends `cancelled` within about a second. The
    session's later messages go on. A finished job is 409, except a cancelled one: repeating a cancel
    is fine. A tool call that already ran is not undone."""
    client = tenant.client
    job = client.cancel(known_id(job_id, "job"), rollback=rollback)
    if job.status is JobStatus.cancelled:
        svc.webhooks.request_delivery(client.r, client.keys, job.job_id)
    elif job.status.finished:  # it finished before its worker saw the request
        raise NotCancellable(f"job {job.job_id} has finished ({job.status.value}); there is nothing to cancel")
    else:
        response.status_code = 202
    return job
