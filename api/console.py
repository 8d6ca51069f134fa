"""The web console at ``/ui``: jobs (running, recent, failed; one job's record and live events), the
fleet, sessions, a chat playground and batches, server-rendered with Jinja2 and a small script shipped
in the package (no build step, no CDN: it works offline).

Who sees what follows the HTTP API: an API key names a tenant, and the console shows that tenant's
namespace only (without keys, the one open tenant). An operator key (``CHATQ_OPERATOR_KEYS``, the
console's only) sees every tenant of ``CHATQ_API_KEYS``: an overview of them all (``/ui/tenants``)
and every page as the tenant it picks, which a second cookie remembers. That cookie names a tenant,
not a secret, and only an operator's key makes the console read it: a tenant's key always shows
its own tenant, whatever that cookie says. A browser's ``EventSource`` cannot send an
``Authorization`` header, and a key in a URL ends up in logs and histories, so the console takes the
key once, in a login form's POST body, and keeps it in a cookie that is ``HttpOnly`` (scripts cannot
read it), ``SameSite=Strict`` (other sites' requests do not carry it) and scoped to ``/ui`` (the JSON
API under ``/v1`` never reads it, so cookies open nothing there). Requests that change something
(login, logout, a playground message, a cancel) must come from the console's own origin: the
``Origin`` header, when sent, must name this host, and the script's requests carry
``X-Chatq-Console``, a header another site's form cannot set.

Handlers are thin: every read is a ``ChatClient`` call of the tenant (``chatq.tasks``), every submit
the API's own ``submit_job`` (quota, metrics, traces), every event stream the API's ``open_stream``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from chatq.tasks.batch import BatchNotFound, BatchSummary
from chatq.tasks.errors import InvalidRequest, JobNotFound
from chatq.tasks.models import Job, JobStatus, utcnow

from .auth import Tenant
from .console_plots import MINUTES, last_hour
from .deps import Services, Svc
from .errors import APIError, NotFound, Unauthorized
from .jobs import MAX_SEQ, submit_job
from .schemas import ChatIn, known_id
from .streams import open_stream

PREFIX = "/ui"
COOKIE = "chatq_console"
TENANT_COOKIE = "chatq_console_tenant"
SWITCH_BACK = {f"{PREFIX}/{page}" for page in ("jobs", "fleet", "sessions", "playground", "batches", "tenants")}
COOKIE_MAX_AGE = 12 * 3600
XHR_HEADER = "X-Chatq-Console"
HERE = Path(__file__).parent

templates = Jinja2Templates(directory=HERE / "templates" / "console")
router = APIRouter(prefix=PREFIX, include_in_schema=False)

SECURITY_HEADERS = {
    # Scripts and styles only from the package's own static files: nothing inline, nothing remote.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class LoginNeeded(Exception):
    """A page asked for without a valid key: answered with the login page's address (303)."""


class Forbidden(APIError):
    status_code, type = 403, "forbidden"


def _services(request: Request) -> Services:
    return request.app.state.services


def _tenant_of(request: Request) -> Tenant | None:
    svc = _services(request)
    if svc.keyring.open:
        return Tenant(None, svc.tenants.client(None))
    key = request.cookies.get(COOKIE)
    name, operator = svc.keyring.console_role(key) if key else (None, False)
    if name is not None:  # a tenant's key: its own tenant, whatever else the request carries
        return Tenant(name, svc.tenants.client(name))
    if not operator:
        return None
    names = svc.settings.tenants
    chosen = request.cookies.get(TENANT_COOKIE)
    name = chosen if chosen in names else names[0]
    return Tenant(name, svc.tenants.client(name), operator=True)


def page_tenant(request: Request) -> Tenant:
    """The console's caller for a page: without a valid key cookie, off to the login page."""
    tenant = _tenant_of(request)
    if tenant is None:
        raise LoginNeeded()
    return tenant


def xhr_tenant(request: Request) -> Tenant:
    """The console's caller for what its script fetches (fragments, events): 401 without a key."""
    tenant = _tenant_of(request)
    if tenant is None:
        raise Unauthorized("log in to the console first (/ui/login)")
    return tenant


def same_origin(request: Request, origin: Annotated[str | None, Header()] = None) -> None:
    """Refuse a state-changing request another site's page sent (on top of the SameSite cookie)."""
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise Forbidden("cross-origin request refused")


def from_script(request: Request, flag: Annotated[str | None, Header(alias=XHR_HEADER)] = None) -> None:
    same_origin(request, request.headers.get("origin"))
    if flag != "1":
        raise Forbidden(f"the console's script sends {XHR_HEADER}: 1")


PageTenant = Annotated[Tenant, Depends(page_tenant)]
XhrTenant = Annotated[Tenant, Depends(xhr_tenant)]


def render(request: Request, name: str, tenant: Tenant | None, status_code: int = 200, **context: Any) -> HTMLResponse:
    svc = _services(request)
    context.update(tenant=tenant, open=svc.keyring.open, prefix=PREFIX,
                   tenant_names=svc.settings.tenants if tenant is not None and tenant.operator else [])
    return templates.TemplateResponse(request, name, context, status_code=status_code, headers=SECURITY_HEADERS)


# Filters: how the pages show times, durations and JSON.
def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _took(job: Job) -> str:
    if job.started_at is None:
        return ""
    end = job.finished_at or utcnow()
    return f"{(end - job.started_at).total_seconds():.1f} s"


def _pretty(value: Any) -> str:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json", exclude_none=True)
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _text(content: Any) -> str:
    """A message's content as text: a string, or its text parts (other parts named by type)."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        part = part if isinstance(part, dict) else part.model_dump()
        parts.append(part.get("text") or f"[{part.get('type', 'part')}]")
    return "\n".join(parts)


templates.env.filters.update(when=_when, took=_took, pretty=_pretty, text=_text)


# Login and logout.
@router.get("", response_class=HTMLResponse)
def home() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/jobs", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", _tenant_of(request))


@router.post("/login", response_class=HTMLResponse, dependencies=[Depends(same_origin)])
async def login(request: Request) -> Response:
    """The key arrives in the form body (never a URL) and goes back only as the HttpOnly cookie."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    svc = _services(request)
    if svc.keyring.open:
        return RedirectResponse(f"{PREFIX}/jobs", status_code=303)
    name, operator = svc.keyring.console_role(key) if key else (None, False)
    if name is None and not operator:
        return render(request, "login.html", None, status_code=401, error="unknown API key")
    response = RedirectResponse(f"{PREFIX}/tenants" if operator else f"{PREFIX}/jobs", status_code=303)
    _set_cookie(request, response, COOKIE, key)
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(name, value, max_age=COOKIE_MAX_AGE, path=PREFIX, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


@router.post("/logout", response_class=HTMLResponse, dependencies=[Depends(same_origin)])
def logout() -> Response:
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    for name in (COOKIE, TENANT_COOKIE):
        response.delete_cookie(name, path=PREFIX, httponly=True, samesite="strict")
    return response


# The operator's view: every tenant at a glance, and which one the other pages show.
def _operator(tenant: Tenant) -> None:
    if not tenant.operator:  # a tenant's key: the page does not exist for it
        raise NotFound("the tenants overview is for operator keys (CHATQ_OPERATOR_KEYS)")


def _overview(request: Request, tenant: Tenant, name: str) -> HTMLResponse:
    """Per tenant: its work now and in the last minute (``chatq top``'s snapshot) and its sessions."""
    _operator(tenant)
    svc = _services(request)
    rows = []
    for t in svc.settings.tenants:
        client = svc.tenants.client(t)
        rows.append((t, client.listing.snapshot(window=60.0, longest=0), client.sessions.page(0, 1)[1]))
    return render(request, name, tenant, rows=rows)


@router.get("/tenants", response_class=HTMLResponse)
def tenants_page(request: Request, tenant: PageTenant) -> HTMLResponse:
    try:
        return _overview(request, tenant, "tenants.html")
    except NotFound:
        return render(request, "missing.html", tenant, status_code=404, what="page")


@router.get("/tenants/panel", response_class=HTMLResponse)
def tenants_panel(request: Request, tenant: XhrTenant) -> HTMLResponse:
    return _overview(request, tenant, "_tenants.html")


@router.post("/tenant", response_class=HTMLResponse, dependencies=[Depends(same_origin)])
async def switch_tenant(request: Request) -> Response:
    """An operator picks the tenant the console shows; back to the page it came from (a console page)."""
    tenant = page_tenant(request)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    name = (form.get("tenant") or [""])[0]
    back = (form.get("next") or [""])[0]
    if not tenant.operator or name not in _services(request).settings.tenants:
        return render(request, "missing.html", tenant, status_code=404, what=f"tenant {name}")
    if back not in SWITCH_BACK:  # one of the lists: another tenant's job or session would be unknown here
        back = f"{PREFIX}/jobs"
    response = RedirectResponse(back, status_code=303)
    _set_cookie(request, response, TENANT_COOKIE, name)
    return response


# Jobs.
Status = Annotated[JobStatus | None, Query()]


def _jobs(tenant: Tenant, status: JobStatus | None, session: str | None, limit: int) -> list[Job]:
    return tenant.client.list_jobs(status.value if status else None, session or None, limit)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, tenant: PageTenant, status: Status = None,
              session: Annotated[str | None, Query(max_length=256)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> HTMLResponse:
    query = {"status": status.value if status else None, "session": session or None, "limit": limit}
    return render(request, "jobs.html", tenant, jobs=_jobs(tenant, status, session, limit),
                  status=query["status"] or "", session=session or "", limit=limit,
                  rows=f"{PREFIX}/jobs/rows?" + urlencode({k: v for k, v in query.items() if v is not None}),
                  statuses=[s.value for s in JobStatus])


@router.get("/jobs/rows", response_class=HTMLResponse)
def jobs_rows(request: Request, tenant: XhrTenant, status: Status = None,
              session: Annotated[str | None, Query(max_length=256)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> HTMLResponse:
    """The jobs table's rows alone, which the page's script fetches to refresh itself."""
    return render(request, "_job_rows.html", tenant, jobs=_jobs(tenant, status, session, limit))


def _job(tenant: Tenant, job_id: str) -> Job:
    job = tenant.client.get(known_id(job_id, "job"))
    if job is None:
        raise JobNotFound(f"unknown or expired job: {job_id}")
    return job


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, tenant: PageTenant) -> HTMLResponse:
    try:
        job = _job(tenant, job_id)
    except (NotFound, JobNotFound):  # another tenant's job too: unknown here
        return render(request, "missing.html", tenant, status_code=404, what=f"job {job_id}")
    return render(request, "job.html", tenant, job=job)


@router.get("/jobs/{job_id}/record", response_class=HTMLResponse)
def job_record(request: Request, job_id: str, tenant: XhrTenant) -> HTMLResponse:
    return render(request, "_job_record.html", tenant, job=_job(tenant, job_id))


@router.get("/jobs/{job_id}/events")
async def job_events(job_id: str, tenant: XhrTenant, svc: Svc,
                     last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0, le=MAX_SEQ)] = None
                     ) -> Response:
    """The API's event stream of the job, for the console's ``EventSource`` (which sends the cookie)."""
    return await open_stream(svc.streams, tenant.client.keys, known_id(job_id, "job"), last_event_id or 0)


@router.post("/jobs/{job_id}/cancel", dependencies=[Depends(from_script)])
def cancel(job_id: str, tenant: XhrTenant) -> dict[str, Any]:
    job = tenant.client.cancel(known_id(job_id, "job"))
    return {"job_id": job.job_id, "status": job.status.value}


# The fleet.
def _fleet(request: Request, tenant: Tenant, name: str) -> HTMLResponse:
    snapshot, processes = tenant.client.fleet(window=60.0)
    now = time.time()
    hour = last_hour(tenant.client.listing.timings((now - MINUTES * 60) * 1000), now)
    return render(request, name, tenant, fleet=snapshot, processes=processes, hour=hour)


@router.get("/fleet", response_class=HTMLResponse)
def fleet_page(request: Request, tenant: PageTenant) -> HTMLResponse:
    return _fleet(request, tenant, "fleet.html")


@router.get("/fleet/panel", response_class=HTMLResponse)
def fleet_panel(request: Request, tenant: XhrTenant) -> HTMLResponse:
    return _fleet(request, tenant, "_fleet.html")


# Sessions.
@router.get("/sessions", response_class=HTMLResponse)
def sessions_page(request: Request, tenant: PageTenant,
                  offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
                  limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> HTMLResponse:
    page, total = tenant.client.sessions.page(offset, limit)
    return render(request, "sessions.html", tenant, sessions=page, total=total, offset=offset, limit=limit)


@router.get("/sessions/{session_id}", response_class=HTMLResponse)
def session_page(request: Request, session_id: str, tenant: PageTenant) -> HTMLResponse:
    try:
        session = tenant.client.get_session(session_id)
    except InvalidRequest:  # not a session ID at all
        session = None
    if session is None:  # another tenant's session too: unknown here
        return render(request, "missing.html", tenant, status_code=404, what=f"session {session_id}")
    pending = tenant.client.listing.active(session.session_id)
    recent = tenant.client.list_jobs(session_id=session.session_id, limit=20)
    return render(request, "session.html", tenant, session=session, pending=pending,
                  recent=[j for j in recent if j.status.finished])


# The playground.
@router.get("/playground", response_class=HTMLResponse)
def playground_page(request: Request, tenant: PageTenant,
                    session: Annotated[str | None, Query(max_length=256)] = None) -> HTMLResponse:
    return render(request, "playground.html", tenant, agents=sorted(tenant.client.known_agents()),
                  session=session or "")


@router.post("/playground/submit", dependencies=[Depends(from_script)])
async def playground_submit(body: ChatIn, tenant: XhrTenant, svc: Svc, request: Request,
                            response: Response) -> dict[str, Any]:
    """A chat turn as ``POST /v1/chat`` submits it (same checks, quota and metrics); the page then
    follows the job's events, so it is submitted to stream."""
    job = await run_in_threadpool(submit_job, svc, tenant, body, body.session_id, request, response, True)
    return {"job_id": job.job_id, "session_id": job.session_id, "status": job.status.value}


# Batches.
BATCHES_SHOWN = 50


def _recent_batches(request: Request, tenant: Tenant) -> list[BatchSummary]:
    return _services(request).tenants.batches(tenant.name).recent(BATCHES_SHOWN)


@router.get("/batches", response_class=HTMLResponse)
def batches_page(request: Request, tenant: PageTenant,
                 id: Annotated[str | None, Query(max_length=256)] = None) -> Response:
    if id:
        return RedirectResponse(f"{PREFIX}/batches/{id.strip()}", status_code=303)
    return render(request, "batches.html", tenant, batches=_recent_batches(request, tenant), shown=BATCHES_SHOWN)


@router.get("/batches/rows", response_class=HTMLResponse)
def batches_rows(request: Request, tenant: XhrTenant) -> HTMLResponse:
    """The recent batches' rows alone, which the page's script fetches to refresh itself."""
    return render(request, "_batch_rows.html", tenant, batches=_recent_batches(request, tenant))


def _batch(request: Request, batch_id: str, tenant: Tenant, name: str) -> HTMLResponse:
    status = _services(request).tenants.batches(tenant.name).status(known_id(batch_id, "batch"))
    t = status.turns
    done = t.succeeded + t.failed + t.cancelled + t.missing
    elapsed = (utcnow() - status.created_at).total_seconds()
    eta = round((t.total - done) * elapsed / done) if done and not status.done else None  # at the pace so far
    return render(request, name, tenant, batch=status, eta=eta)


@router.get("/batches/{batch_id}", response_class=HTMLResponse)
def batch_page(request: Request, batch_id: str, tenant: PageTenant) -> HTMLResponse:
    try:
        return _batch(request, batch_id, tenant, "batch.html")
    except (NotFound, BatchNotFound):  # the page says so, as the job and session pages do
        return render(request, "missing.html", tenant, status_code=404, what=f"batch {batch_id}")


@router.get("/batches/{batch_id}/panel", response_class=HTMLResponse)
def batch_panel(request: Request, batch_id: str, tenant: XhrTenant) -> HTMLResponse:
    return _batch(request, batch_id, tenant, "_batch.html")


async def _login_needed(request: Request, _: Exception) -> Response:
    return RedirectResponse(f"{PREFIX}/login", status_code=303)


def install(app: FastAPI) -> None:
    """The console's routes, its static files (``/ui/static``) and its redirect to the login page."""
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static" / "console"), name="console-static")
    app.add_exception_handler(LoginNeeded, _login_needed)
