"""Sessions of the caller's tenant: list, show, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from chatq.tasks.models import Session

from .auth import CurrentTenant
from .errors import NotFound, responses
from .schemas import SessionId, SessionList

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
