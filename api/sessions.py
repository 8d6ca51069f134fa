"""Sessions of the caller's tenant: create (seeded or not), list, show, delete, regenerate, fork."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from chatq.tasks.models import Job, Session

from .auth import CurrentTenant
from .errors import NotFound, responses
from .schemas import ForkIn, RegenerateIn, SessionId, SessionIn, SessionList

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses=responses(401, 422, 503))


@router.get("", response_model=SessionList)
def list_sessions(tenant: CurrentTenant,
                  offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> SessionList:
    """The tenant's session IDs, oldest first."""
    page, total = tenant.client.sessions.page(offset, limit)
    return SessionList(sessions=page, total=total)


@router.get("/{session_id}", response_model=Session, responses=responses(404))
def get_session(session_id: SessionId, tenant: CurrentTenant) -> Session:
    """The session's history, usage and pending jobs."""
    session = tenant.client.get_session(session_id)
    if session is None:
        raise NotFound(f"unknown session: {session_id}")
    return session


@router.delete("/{session_id}", status_code=204, response_class=Response,
               responses={204: {"description": "Deleted."}, **responses(404, 409)})
def delete_session(session_id: SessionId, tenant: CurrentTenant) -> Response:
    """Delete the session's history; 409 while it has jobs queued or running."""
    if not tenant.client.delete_session(session_id):
        raise NotFound(f"unknown session: {session_id}")
    return Response(status_code=204)


@router.post("", response_model=Session, status_code=201, responses=responses(409, 413))
def create_session(body: SessionIn, tenant: CurrentTenant) -> Session:
    """Get or create a session; with `system_prompt` or `messages`, seed it with a history of its own
    (409 if it already has history or queued work)."""
    return tenant.client.create_session(body.session_id, body.ttl, body.system_prompt, body.messages)


_QUEUED = dict(status_code=202, response_model=Job, responses={
    202: {"description": "Queued behind the session's earlier jobs; poll the Location.",
          "headers": {"Location": {"description": "Where to poll the job.", "schema": {"type": "string"}}}},
    **responses(413)})


@router.post("/{session_id}/regenerate", **_QUEUED)
def regenerate(session_id: SessionId, body: RegenerateIn, tenant: CurrentTenant, request: Request,
               response: Response) -> Job:
    """Answer the session's last user message again; the new reply replaces the old in the history."""
    job = tenant.client.regenerate(session_id, body.agent)
    response.headers["Location"] = str(request.url_for("get_job", job_id=job.job_id))
    return job


@router.post("/{session_id}/fork", **_QUEUED)
def fork(session_id: SessionId, body: ForkIn, tenant: CurrentTenant, request: Request, response: Response) -> Job:
    """Copy the session's first `at` messages (then `replace`, if given) into a new session, once its
    earlier jobs are done; the job's `result.content` is the new session's ID."""
    job = tenant.client.fork(session_id, body.at, body.into, body.replace)
    response.headers["Location"] = str(request.url_for("get_job", job_id=job.job_id))
    return job
