"""Batches: a JSONL body of conversations in, counts to poll, one JSON line per conversation out."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from chatq.tasks.batch import BatchInfo, BatchStatus, CancelReport
from chatq.tasks.batch_input import count_lines

from .auth import CurrentTenant
from .deps import Svc
from .errors import responses
from .jobs import checked_callback
from .quota import check_quota
from .schemas import BatchId, known_id

router = APIRouter(prefix="/v1/batches", tags=["batches"], responses=responses(401, 422, 503))

JSONL = "application/x-ndjson"
_LOCATION = {"Location": {"description": "Where to poll the batch.", "schema": {"type": "string"}}}
_LINE_DOC = (
    "One conversation per line: chatq's `{\"custom_id\", \"session_id\"?, \"agent\"?, \"messages\": [...] | "
    "\"message\", \"metadata\"?}` or an OpenAI Batch API request line."
)


@router.post(
    "", status_code=202, response_model=BatchInfo,
    responses={202: {"description": "Queued; poll the Location.", "headers": _LOCATION}, **responses(413, 429)},
    openapi_extra={"requestBody": {"required": True, "description": _LINE_DOC,
                                   "content": {JSONL: {"schema": {"type": "string"}}}}},
)
async def submit_batch(
    request: Request, response: Response, tenant: CurrentTenant, svc: Svc,
    skip_invalid: Annotated[bool, Query(
        description="Leave invalid lines out (listed) instead of refusing all.")] = False,
    agent: Annotated[str | None, Query(max_length=128, description="Agent for lines that name none.")] = None,
    callback_url: Annotated[str | None, Query(max_length=2048, description=(
        "Every turn's job is POSTed here, signed, when it finishes (its record carries the batch_id)."))] = None,
) -> BatchInfo:
    """Validate every line, then queue every turn; invalid lines refuse the whole batch (422) unless skipped."""
    body = await request.body()  # bytes: split and decoded by the same JSONL parser as the CLI's files
    batches = svc.tenants.batches(tenant.name)
    callback = checked_callback(svc, tenant, callback_url)
    with svc.metrics.submission(tenant.label) as tally:
        # Lines are a lower bound on turns: the quota is checked before parsing, and soft anyway.
        tally.jobs = count_lines(body)
        await run_in_threadpool(check_quota, tenant.client, svc.settings.max_active_jobs, tally.jobs)
        info = await run_in_threadpool(batches.submit, body, skip_invalid, agent, callback)
        tally.jobs = info.turns
    response.headers["Location"] = str(request.url_for("get_batch", batch_id=info.batch_id))
    return info


@router.get("/{batch_id}", response_model=BatchStatus, responses={
    200: {"headers": {"Retry-After": {"description": "Seconds to wait before polling again (while unfinished).",
                                      "schema": {"type": "string"}}}},
    **responses(404)})
def get_batch(batch_id: BatchId, tenant: CurrentTenant, svc: Svc, response: Response) -> BatchStatus:
    """Conversation and turn counts; `Retry-After` until every turn has finished."""
    status = svc.tenants.batches(tenant.name).status(known_id(batch_id, "batch"))
    if not status.done:
        response.headers["Retry-After"] = "2"
    return status


@router.get(
    "/{batch_id}/results", response_class=StreamingResponse,
    responses={200: {"description": "One line per conversation, in input order: a `ConversationResult`, or "
                                    "OpenAI's Batch output line (`format=openai`).",
                     "content": {JSONL: {"schema": {"type": "string"}}}},
               **responses(404)},
)
def batch_results(batch_id: BatchId, tenant: CurrentTenant, svc: Svc,
                  format: Annotated[Literal["openai", "chatq"] | None, Query(description=(
                      "OpenAI's Batch output lines or chatq's; default openai when every input line was an "
                      "OpenAI request line."))] = None) -> StreamingResponse:
    """Results so far, one JSON line per conversation; unfinished ones show what has run."""
    results = svc.tenants.batches(tenant.name).iter_output(known_id(batch_id, "batch"), format)
    first = next(results, None)  # an unknown batch raises here, before the response starts

    def lines(items: Iterator[BaseModel]) -> Iterator[str]:
        for result in items:
            yield result.model_dump_json() + "\n"

    return StreamingResponse(lines(chain([first] if first else [], results)), media_type=JSONL)


@router.post("/{batch_id}/cancel", response_model=CancelReport, responses=responses(404))
def cancel_batch(batch_id: BatchId, tenant: CurrentTenant, svc: Svc) -> CancelReport:
    """Cancel every still-queued turn; running and finished turns are left alone."""
    return svc.tenants.batches(tenant.name).cancel(known_id(batch_id, "batch"))
