"""The web console's rules over plain HTTP (httpx): who is let in, what each tenant sees, what a
cross-site request cannot do, and that the key never shows up in a URL. The browser's view is in
tests/test_console_browser.py."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import httpx
import pytest

from chatq.api.app import create_app
from chatq.testing.cluster import until

from .test_api import KEY_A, KEY_B, api_settings, finished, http, serve, sid, submit

COOKIE = "chatq_console"
SCRIPT = {"X-Chatq-Console": "1"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
KEY_C = "key-c-" + uuid.uuid4().hex  # a tenant no other test writes to: its plots hold only one test's jobs
OPERATOR_KEY = "operator-" + uuid.uuid4().hex


def console_settings():
    """The API's test settings with a third tenant and an operator key (the console's only)."""
    return api_settings(api_keys={KEY_A: "acme", KEY_B: "globex", KEY_C: "plots"}, operator_keys=[OPERATOR_KEY])


@pytest.fixture(scope="module")
def base_url(fleet) -> Iterator[str]:
    with serve(create_app(console_settings(), fleet.settings)) as url:
        yield url


@contextmanager
def console(base_url: str, key: str | None) -> Iterator[httpx.Client]:
    """A browser-like client: no Authorization header, logged in through the form (if a key is given)."""
    with httpx.Client(base_url=base_url, timeout=60, trust_env=False) as c:
        if key is not None:
            r = c.post("/ui/login", content=f"key={key}", headers=FORM)
            landing = "/ui/tenants" if key == OPERATOR_KEY else "/ui/jobs"
            assert r.status_code == 303 and r.headers["location"] == landing, r.text
        yield c


@pytest.fixture
def ui_a(base_url) -> Iterator[httpx.Client]:
    with console(base_url, KEY_A) as c:
        yield c


@pytest.fixture
def ui_b(base_url) -> Iterator[httpx.Client]:
    with console(base_url, KEY_B) as c:
        yield c


@pytest.fixture
def api_a(base_url) -> Iterator[httpx.Client]:
    with http(base_url, KEY_A) as c:
        yield c


def test_pages_send_the_anonymous_to_the_login_page_and_fragments_answer_401(base_url):
    with console(base_url, None) as c:
        for page in ("/ui", "/ui/jobs", "/ui/fleet", "/ui/sessions", "/ui/playground", "/ui/batches"):
            r = c.get(page, follow_redirects=True)
            assert r.status_code == 200 and r.url.path == "/ui/login" and 'name="key"' in r.text, page
        for fragment in ("/ui/jobs/rows", "/ui/fleet/panel", "/ui/jobs/" + "0" * 32 + "/events"):
            assert c.get(fragment).status_code == 401, fragment
        # An API key as a bearer header is for /v1: the console goes by its cookie alone.
        r = c.get("/ui/jobs", headers={"Authorization": f"Bearer {KEY_A}"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/login"


def test_login_keeps_the_key_in_an_httponly_strict_cookie_for_ui_only(base_url):
    with console(base_url, None) as c:
        wrong = c.post("/ui/login", content="key=not-a-key", headers=FORM)
        assert wrong.status_code == 401 and "unknown API key" in wrong.text and COOKIE not in wrong.headers.get(
            "set-cookie", "")
        r = c.post("/ui/login", content=f"key={KEY_A}", headers=FORM)
        assert r.status_code == 303 and KEY_A not in r.headers["location"]
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        page = c.get("/ui/jobs")
        assert page.status_code == 200 and "acme" in page.text and KEY_A not in page.text
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
        # The cookie opens nothing under /v1 (a browser would not even send it there).
        assert c.get("/v1/sessions", headers={"Cookie": f"{COOKIE}={KEY_A}"}).status_code == 401
        out = c.post("/ui/logout")
        assert out.status_code == 303 and 'max-age=0' in out.headers["set-cookie"].lower()
        assert c.get("/ui/jobs").status_code == 303


def test_cross_site_requests_are_refused(ui_a):
    evil = {"Origin": "http://evil.example"}
    assert ui_a.post("/ui/login", content=f"key={KEY_A}", headers={**FORM, **evil}).status_code == 403
    assert ui_a.post("/ui/logout", headers=evil).status_code == 403
    body = {"message": "hello"}
    assert ui_a.post("/ui/playground/submit", json=body).status_code == 403  # a form cannot set the header
    assert ui_a.post("/ui/playground/submit", json=body, headers={**SCRIPT, **evil}).status_code == 403
    assert ui_a.post("/ui/jobs/" + "0" * 32 + "/cancel", headers=evil).status_code == 403


def test_a_job_its_events_and_its_failure_on_the_console(ui_a, api_a):
    s = sid("ui")
    ok = submit(api_a, "My name is Alice", s)
    bad = submit(api_a, "[[fault:400]] x", sid("ui"))
    reply = finished(api_a, ok["job_id"])["result"]["content"]
    assert finished(api_a, bad["job_id"])["status"] == "failed"
    rows = ui_a.get("/ui/jobs/rows").text
    assert ok["job_id"] in rows and bad["job_id"] in rows
    failed = ui_a.get("/ui/jobs/rows", params={"status": "failed"}).text
    assert bad["job_id"] in failed and ok["job_id"] not in failed
    page = ui_a.get(f"/ui/jobs/{bad['job_id']}")
    assert page.status_code == 200 and 'id="job-error"' in page.text and "400" in page.text
    with ui_a.stream("GET", f"/ui/jobs/{ok['job_id']}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    assert "event: job.started" in text and "event: job.succeeded" in text
    assert ui_a.get(f"/ui/jobs/{ok['job_id']}/events", headers={"Last-Event-ID": "999"}).status_code == 204
    session = ui_a.get(f"/ui/sessions/{s}")
    assert session.status_code == 200 and "My name is Alice" in session.text and reply in session.text


def test_the_playground_submits_as_the_api_does(ui_a, api_a):
    r = ui_a.post("/ui/playground/submit", json={"message": "My name is Bo", "session_id": sid("pg")}, headers=SCRIPT)
    assert r.status_code == 200, r.text
    assert finished(api_a, r.json()["job_id"])["status"] == "succeeded"
    bad = ui_a.post("/ui/playground/submit", json={"message": "hi", "agent": "nobody"}, headers=SCRIPT)
    assert bad.status_code == 422 and "unknown agent" in bad.json()["error"]["message"]


def test_another_tenant_sees_none_of_it(ui_a, ui_b, api_a):
    s = sid("secret")
    job = submit(api_a, "My name is Carol", s)
    finished(api_a, job["job_id"])
    assert s in ui_a.get("/ui/sessions").text
    assert s not in ui_b.get("/ui/sessions").text
    assert job["job_id"] not in ui_b.get("/ui/jobs/rows").text
    assert ui_b.get(f"/ui/sessions/{s}").status_code == 404
    assert ui_b.get(f"/ui/jobs/{job['job_id']}").status_code == 404
    assert ui_b.get(f"/ui/jobs/{job['job_id']}/record").status_code == 404
    assert ui_b.get(f"/ui/jobs/{job['job_id']}/events").status_code == 404
    assert ui_b.post(f"/ui/jobs/{job['job_id']}/cancel", headers=SCRIPT).status_code == 404


def test_fleet_and_batch_pages(ui_a, api_a):
    lines = b'{"custom_id": "one", "message": "hello"}\n{"custom_id": "two", "message": "hi"}\n'
    batch = api_a.post("/v1/batches", content=lines, headers={"Content-Type": "application/x-ndjson"})
    assert batch.status_code == 202, batch.text
    batch_id = batch.json()["batch_id"]
    assert ui_a.get("/ui/batches", params={"id": batch_id}).headers["location"] == f"/ui/batches/{batch_id}"
    page = ui_a.get(f"/ui/batches/{batch_id}")
    assert page.status_code == 200 and 'id="batch-progress"' in page.text
    assert ui_a.get("/ui/batches/" + "0" * 32).status_code == 404
    fleet = ui_a.get("/ui/fleet")
    assert fleet.status_code == 200 and 'id="throughput"' in fleet.text and 'id="fleet-running"' in fleet.text
    assert 'id="latency"' in fleet.text


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_the_fleet_plots_each_minutes_latency_from_the_jobs_records(base_url):
    # Tenant "plots" has only these jobs: 4 that ran (one made to take 2 s by the test server), one
    # cancelled while queued behind the slow one (no latency: it never ran).
    with console(base_url, KEY_C) as ui, http(base_url, KEY_C) as api:
        assert 'class="minute"' not in ui.get("/ui/fleet/panel").text  # nothing finished yet: no bars
        slow = sid("slow")
        jobs = [submit(api, f"[[stall:{s}]] {sid('msg')}", slow if s == 2 else sid("lat")) for s in (0, 0, 1, 2)]
        queued = submit(api, "behind the slow one", slow)
        api.post(f"/v1/jobs/{queued['job_id']}/cancel")
        records = [finished(api, j["job_id"]) for j in jobs]
        cancelled = finished(api, queued["job_id"])
        assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None
        panel = ui.get("/ui/fleet/panel").text
    run = [round((_epoch(j["finished_at"]) - _epoch(j["started_at"])) * 1000) for j in records]
    done = [round((_epoch(j["finished_at"]) - _epoch(j["created_at"])) * 1000) for j in records]
    assert max(run) >= 2000  # the stalled job's run time is in its record
    bars = [dict(re.findall(r'data-([a-z0-9-]+)="(-?\d+)"', g)) for g in re.findall(r'<g class="minute"([^>]*)>', panel)]
    assert 1 <= len(bars) <= 2, panel  # one minute, or two if the jobs straddled a minute's end
    assert sum(int(b["jobs"]) for b in bars) == 4  # the cancelled job has no latency
    # Fewer than 20 jobs a minute: a minute's p95 (nearest rank) is its slowest job, its p50 one of them.
    assert max(int(b["run-p95-ms"]) for b in bars) == max(run)
    assert max(int(b["done-p95-ms"]) for b in bars) == max(done)
    assert all(int(b["run-p50-ms"]) in run and int(b["done-p50-ms"]) in done for b in bars)
    assert all(int(b["minute"]) in (0, -1) for b in bars)  # the last minute (or the one before)


def test_without_api_keys_the_console_is_open_like_the_api(fleet):
    with serve(create_app(api_settings(api_keys={}), fleet.settings)) as url, console(url, None) as c:
        r = c.get("/ui/jobs")
        assert r.status_code == 200 and "Log out" not in r.text


def test_what_users_wrote_is_shown_as_text_never_as_markup(ui_a, api_a):
    s = sid("xss")
    markup = "<img src=x onerror=alert(1)> hi"
    finished(api_a, submit(api_a, markup, s, metadata={"note": "<script>alert(2)</script>"})["job_id"])
    for page in (f"/ui/sessions/{s}", "/ui/jobs/rows"):
        text = ui_a.get(page).text
        assert "<img src=x" not in text and "<script>alert" not in text, page
    assert "&lt;img src=x onerror=alert(1)&gt;" in ui_a.get(f"/ui/sessions/{s}").text


def test_an_operator_views_every_tenant_and_a_tenants_key_still_sees_its_own(base_url, ui_b, api_a):
    s_a, s_b = sid("op-a"), sid("op-b")
    finished(api_a, submit(api_a, "My name is Ann", s_a)["job_id"])
    with http(base_url, KEY_B) as api_b:
        finished(api_b, submit(api_b, "My name is Bea", s_b)["job_id"])
    with console(base_url, OPERATOR_KEY) as op:
        overview = op.get("/ui/tenants")
        assert overview.status_code == 200 and OPERATOR_KEY not in overview.text
        for name in ("acme", "globex", "plots"):
            assert f'data-tenant="{name}"' in overview.text
        assert op.get("/ui/tenants/panel").status_code == 200
        seen = {}
        for name in ("acme", "globex"):
            r = op.post("/ui/tenant", content=f"tenant={name}&next=/ui/sessions", headers=FORM)
            assert r.status_code == 303 and r.headers["location"] == "/ui/sessions"
            page = op.get("/ui/sessions")
            assert f'<b id="tenant">{name}</b>' in page.text and 'id="switch"' in page.text
            seen[name] = page.text
            assert op.get(f"/ui/sessions/{s_a if name == 'acme' else s_b}").status_code == 200
        assert s_a in seen["acme"] and s_b not in seen["acme"]
        assert s_b in seen["globex"] and s_a not in seen["globex"]
        # Only a tenant of CHATQ_API_KEYS, and only back to one of the console's lists.
        assert op.post("/ui/tenant", content="tenant=nobody", headers=FORM).status_code == 404
        r = op.post("/ui/tenant", content="tenant=acme&next=https://evil.example/", headers=FORM)
        assert r.headers["location"] == "/ui/jobs"
        assert op.post("/ui/tenant", content="tenant=acme", headers={**FORM, "Origin": "http://evil.example"}
                       ).status_code == 403
        # The operator key is the console's: it opens nothing under /v1.
        with http(base_url, OPERATOR_KEY) as as_api:
            assert as_api.get("/v1/sessions").status_code == 401
    # A tenant's key ignores the operator's tenant cookie, and neither switches nor sees the overview.
    ui_b.cookies.set("chatq_console_tenant", "acme", path="/ui")
    assert s_a not in ui_b.get("/ui/sessions").text and ui_b.get(f"/ui/sessions/{s_a}").status_code == 404
    assert ui_b.post("/ui/tenant", content="tenant=acme", headers=FORM).status_code == 404
    assert s_a not in ui_b.get("/ui/sessions").text
    assert ui_b.get("/ui/tenants").status_code == 404 and ui_b.get("/ui/tenants/panel").status_code == 404


def test_the_batches_page_lists_the_tenants_batches_newest_first(ui_a, ui_b, api_a):
    ids = []
    for n in (1, 2):
        lines = "".join(f'{{"custom_id": "c{i}", "message": "hello {i}"}}\n' for i in range(n)).encode()
        r = api_a.post("/v1/batches", content=lines, headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["batch_id"])
    for batch_id in ids:
        until(lambda: api_a.get(f"/v1/batches/{batch_id}").json()["done"], f"batch {batch_id} done")
    rows = ui_a.get("/ui/batches/rows").text
    listed = re.findall(r'data-batch="([0-9a-f]{32})"', rows)
    assert listed.index(ids[1]) < listed.index(ids[0])  # newest first
    row = rows.split(f'data-batch="{ids[1]}"')[1].split("</tr>")[0]
    assert 'value="2"' in row and 'max="2"' in row and ">done<" in row
    page = ui_a.get("/ui/batches")
    assert page.status_code == 200 and ids[0] in page.text and 'id="batch-rows"' in page.text
    assert ids[0] not in ui_b.get("/ui/batches/rows").text  # another tenant's batches are not listed
