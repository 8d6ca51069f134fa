"""The HTTP API end to end: uvicorn on a free port, real Redis, the shared fleet's real workers, httpx."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from chatq.api.app import create_app
from chatq.api.config import ApiSettings
from chatq.tasks.job_store import encode_job
from chatq.tasks.keys import Keys
from chatq.tasks.models import Job, JobStatus
from chatq.tasks.settings import Settings
from chatq.tasks.webhooks import SIGNATURE_HEADER, WebhookSender, verify

KEY_A, KEY_B = "key-a-" + uuid.uuid4().hex, "key-b-" + uuid.uuid4().hex
METRICS_KEY = "metrics-" + uuid.uuid4().hex
MASTER_SECRET = "test-master-secret"


def sid(prefix: str = "api") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def api_settings(**overrides) -> ApiSettings:
    base = dict(api_keys={KEY_A: "acme", KEY_B: "globex"}, max_body_bytes=64 * 1024,
                metrics_key=METRICS_KEY)
    return ApiSettings(**{**base, **overrides})


def signing(settings: Settings, **overrides) -> Settings:
    """The fleet's core settings with webhook signing (a core setting: workers and the API both sign)."""
    webhook = {"webhook_secret": SecretStr(MASTER_SECRET), "webhook_allow_private": True, **overrides}
    return settings.model_copy(update=webhook)


@contextmanager
def serve(app) -> Iterator[str]:
    """The app on uvicorn in a thread, on a port the OS picked; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def http(base_url: str, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=60, trust_env=False)


@pytest.fixture(scope="module")
def base_url(fleet) -> Iterator[str]:
    with serve(create_app(api_settings(), signing(fleet.settings))) as url:
        yield url


@pytest.fixture
def a(base_url) -> Iterator[httpx.Client]:
    with http(base_url, KEY_A) as c:
        yield c


@pytest.fixture
def b(base_url) -> Iterator[httpx.Client]:
    with http(base_url, KEY_B) as c:
        yield c


def submit(c: httpx.Client, message: str, session_id: str | None = None, **body) -> dict:
    path = f"/v1/sessions/{session_id}/messages" if session_id else "/v1/chat"
    r = c.post(path, json={"message": message, **body})
    assert r.status_code == 202, r.text
    return r.json()


def finished(c: httpx.Client, job_id: str, timeout: float = 30) -> dict:
    r = c.get(f"/v1/jobs/{job_id}", params={"wait": timeout})
    assert r.status_code == 200, r.text
    job = r.json()
    assert JobStatus(job["status"]).finished, job
    return job


def assert_error(r: httpx.Response, status: int, type_: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if type_:
        assert error["type"] == type_, error
    return error


# Submission and polling
def test_submit_202_location_then_long_poll_succeeds(a):
    s = sid()
    r = a.post("/v1/chat", json={"message": "My name is Alice", "session_id": s, "metadata": {"user": 7}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["session_id"] == s and job["metadata"] == {"user": 7}
    assert r.headers["Location"].endswith(f"/v1/jobs/{job['job_id']}")
    assert r.headers["Retry-After"] == "1"
    polled = a.get(r.headers["Location"], params={"wait": 30})
    assert polled.status_code == 200
    done = polled.json()
    assert done["status"] == "succeeded" and done["result"]["content"] and done["finished_at"]
    assert "Retry-After" not in polled.headers
    assert Job.model_validate(done).job_id == job["job_id"]


def test_chat_without_session_starts_a_new_one(a):
    one, two = submit(a, "hello"), submit(a, "hello")
    assert one["session_id"] != two["session_id"]
    assert finished(a, one["job_id"])["status"] == "succeeded"


def test_memory_across_two_messages(a):
    s = sid()
    finished(a, submit(a, "My name is Alice", s)["job_id"])
    second = finished(a, submit(a, "What's my name?", s)["job_id"])
    assert second["result"]["content"] == "Your name is Alice."
    session = a.get(f"/v1/sessions/{s}").json()
    assert [m["role"] for m in session["messages"]] == ["user", "assistant"] * 2
    assert session["usage"]["total_tokens"] > 0


def test_long_poll_gives_up_at_its_wait_with_a_retry_hint(a):
    job = submit(a, "[[stall:2]] slow", sid())
    t0 = time.monotonic()
    r = a.get(f"/v1/jobs/{job['job_id']}", params={"wait": 0.3})
    assert r.status_code == 200 and r.json()["status"] in ("queued", "running")
    assert r.headers["Retry-After"] == "1" and time.monotonic() - t0 < 2
    assert finished(a, job["job_id"])["status"] == "succeeded"


def test_idempotency_key_returns_the_same_job(a):
    s, key = sid(), uuid.uuid4().hex
    one = submit(a, "once", s, idempotency_key=key)
    two = submit(a, "once", s, idempotency_key=key)
    assert one["job_id"] == two["job_id"]


# Tenants and auth
def test_tenants_cannot_see_each_others_jobs_or_sessions(a, b):
    s = sid("shared-name")
    job = finished(a, submit(a, "My name is Alice", s)["job_id"])
    assert_error(b.get(f"/v1/jobs/{job['job_id']}"), 404, "not_found")
    assert_error(b.post(f"/v1/jobs/{job['job_id']}/cancel"), 404)
    assert_error(b.get(f"/v1/sessions/{s}"), 404)
    assert_error(b.delete(f"/v1/sessions/{s}"), 404)
    assert s in a.get("/v1/sessions", params={"limit": 1000}).json()["sessions"]
    assert s not in b.get("/v1/sessions", params={"limit": 1000}).json()["sessions"]
    # The same session ID under tenant B is B's own session, with no memory of A's.
    theirs = finished(b, submit(b, "What's my name?", s)["job_id"])
    assert "Alice" not in theirs["result"]["content"]
    assert len(a.get(f"/v1/sessions/{s}").json()["messages"]) == 2


def test_missing_or_wrong_key_is_401(base_url):
    with http(base_url) as anonymous, http(base_url, "not-a-key") as wrong:
        for c in (anonymous, wrong):
            r = c.post("/v1/chat", json={"message": "hi"})
            assert_error(r, 401, "unauthorized")
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert_error(c.get("/v1/sessions"), 401)


def test_open_mode_needs_no_key_and_says_so_at_start(fleet, capfd):
    with serve(create_app(ApiSettings(api_keys={}), fleet.settings)) as url, http(url) as c:
        job = finished(c, submit(c, "open hello")["job_id"])
        assert job["status"] == "succeeded"
        assert fleet.client().get(job["job_id"]) is not None  # the open tenant is the base namespace
    assert "WARNING:  CHATQ_API_KEYS is not set" in capfd.readouterr().err


# Errors
def test_oversized_bodies_are_413_before_parsing(a):
    big = {"message": "x" * (70 * 1024)}
    assert_error(a.post("/v1/chat", json=big), 413, "payload_too_large")

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(80):
            yield b" " * 1024
        yield json.dumps({"message": "hi"}).encode()

    r = a.post("/v1/chat", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(r, 413, "payload_too_large")


@pytest.mark.parametrize("path,body,fragment", [
    ("/v1/chat", {"message": ""}, "message"),
    ("/v1/chat", {"message": "   "}, "message is empty"),
    ("/v1/chat", {"message": "hi", "session_id": "bad id!"}, "session_id"),
    ("/v1/sessions/bad%20id!/messages", {"message": "hi"}, "session_id"),
    ("/v1/chat", {"message": "hi", "agent": "nobody"}, "unknown agent"),
    ("/v1/chat", {"message": "hi", "surprise": 1}, "surprise"),
    ("/v1/chat", {"message": "hi", "callback_url": "ftp://example.com/x"}, "callback_url"),
    ("/v1/chat", {"message": "x" * 40_000}, "limit"),
])
def test_invalid_input_is_422(a, path, body, fragment):
    error = assert_error(a.post(path, json=body), 422, "invalid_request")
    assert fragment in json.dumps(error)


def test_unknown_ids_are_404(a):
    for job_id in (uuid.uuid4().hex, "nope", "a" * 31 + ":"):
        assert_error(a.get(f"/v1/jobs/{job_id}"), 404, "not_found")
        assert_error(a.post(f"/v1/jobs/{job_id}/cancel"), 404, "not_found")
    assert_error(a.get(f"/v1/sessions/{sid()}"), 404, "not_found")
    assert_error(a.get("/v1/nothing-here"), 404)
    assert_error(a.put("/v1/chat"), 405, "method_not_allowed")


@pytest.mark.parametrize("content,content_type", [
    (b'{"message": "hi", "metadata": {"x": NaN}}', "application/json"),
    (b'{"message": "hi", "metadata": {"x": 1' + b"0" * 5000 + b"}}", "application/json"),
    (b'{"message": ', "application/json"),
    (b"\xff\xfe not utf-8", "application/json"),
    (b"message=hi", "application/x-www-form-urlencoded"),
    (b'{"message": "hi"}', "text/plain"),
    (b"[" * 5000 + b"]" * 5000, "application/json"),
    (b'{"message": "\\u0000"}', "application/json"),
])
def test_odd_bodies_never_500(a, content, content_type):
    r = a.post("/v1/chat", content=content, headers={"Content-Type": content_type})
    assert r.status_code < 500, r.text
    assert r.status_code == 202 or "error" in r.json()


def test_unexpected_errors_still_answer_in_the_error_shape(fleet):
    app = create_app(api_settings(), fleet.settings)
    app.add_api_route("/boom", lambda: 1 / 0)
    with serve(app) as url, http(url) as c:
        assert_error(c.get("/boom"), 500, "internal_error")


@pytest.mark.parametrize("params", [{"wait": "nan"}, {"wait": "-1"}, {"wait": "inf"}, {"wait": "x"}])
def test_bad_wait_is_422(a, params):
    assert_error(a.get(f"/v1/jobs/{uuid.uuid4().hex}", params=params), 422, "invalid_request")


def test_on_busy_reject_is_409(a):
    s = sid()
    first = submit(a, f"busy [[stall:1.5]] now {s}", s)
    assert_error(a.post(f"/v1/sessions/{s}/messages", json={"message": "no", "on_busy": "reject"}), 409, "session_busy")
    finished(a, first["job_id"])


def test_cancel_queued_job_and_409_once_it_cannot_be(a):
    s = sid()
    first = submit(a, f"hold [[stall:1.5]] on {s}", s)
    second = submit(a, "cancel me", s)
    r = a.post(f"/v1/jobs/{second['job_id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    again = a.post(f"/v1/jobs/{second['job_id']}/cancel")  # idempotent, as ChatClient.cancel is
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert finished(a, first["job_id"])["status"] == "succeeded"
    assert_error(a.post(f"/v1/jobs/{first['job_id']}/cancel"), 409, "not_cancellable")


def test_delete_session(a):
    s = sid()
    busy = submit(a, "[[stall:1]] remember me", s)
    assert_error(a.delete(f"/v1/sessions/{s}"), 409, "session_busy")
    finished(a, busy["job_id"])
    assert a.delete(f"/v1/sessions/{s}").status_code == 204
    assert_error(a.get(f"/v1/sessions/{s}"), 404)
    assert_error(a.delete(f"/v1/sessions/{s}"), 404)


def test_sessions_list_pages(a):
    ids = [sid("page") for _ in range(3)]
    for s in ids:
        finished(a, submit(a, "hi", s)["job_id"])
    total = a.get("/v1/sessions").json()["total"]
    page = a.get("/v1/sessions", params={"offset": total - 2, "limit": 2}).json()
    assert page["sessions"] == ids[1:] and page["total"] == total


def test_quota_full_is_429(fleet):
    with serve(create_app(api_settings(max_active_jobs=2), fleet.settings)) as url, http(url, KEY_A) as c:
        s = sid("quota")
        jobs = [submit(c, f"[[stall:1.5]] q{i}", s) for i in range(2)]
        r = c.post("/v1/chat", json={"message": "one too many"})
        assert_error(r, 429, "quota_exceeded")
        assert r.headers["Retry-After"]
        for job in jobs:
            finished(c, job["job_id"])
        assert c.post("/v1/chat", json={"message": "room again"}).status_code == 202


# Operations
def test_healthz(base_url):
    with http(base_url) as c:
        r = c.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "redis": True, "workers": True}


def test_metrics(a, base_url):
    finished(a, submit(a, "count me", sid())["job_id"])
    a.post("/v1/chat", json={"message": ""})
    with http(base_url, METRICS_KEY) as c:
        r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'chatq_jobs_submitted_total{outcome="accepted",tenant="acme"}' in text
    assert 'chatq_http_request_duration_seconds_bucket{' in text and 'route="/v1/jobs/{job_id}"' in text
    assert 'chatq_jobs_active{status="queued",tenant="globex"}' in text
    assert "chatq_redis_up 1.0" in text and "chatq_broker_queue_depth" in text


def test_openapi_is_served(base_url):
    with http(base_url) as c:
        schema = c.get("/openapi.json").json()
    assert {"/v1/chat", "/v1/jobs/{job_id}", "/v1/batches", "/healthz", "/metrics"} <= set(schema["paths"])


# Batches
def test_batch_submit_poll_results(a, b):
    lines = [
        {"custom_id": "one", "messages": ["My name is Dana", "What's my name?"]},
        {"custom_id": "two", "message": "hello"},
    ]
    body = "\n".join(json.dumps(line) for line in lines)
    r = a.post("/v1/batches", content=body, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    info = r.json()
    assert info["total"] == 2 and info["turns"] == 3
    deadline = time.monotonic() + 60
    while not (status := a.get(r.headers["Location"]).json())["done"]:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["succeeded"] == 2
    results = a.get(f"/v1/batches/{info['batch_id']}/results")
    assert results.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in results.text.splitlines()]
    assert [row["custom_id"] for row in rows] == ["one", "two"]
    assert rows[0]["replies"][1] == "Your name is Dana."
    assert_error(b.get(f"/v1/batches/{info['batch_id']}"), 404, "not_found")
    assert_error(b.get(f"/v1/batches/{info['batch_id']}/results"), 404, "not_found")


def test_invalid_batch_is_422_with_line_numbers(a):
    body = '{"custom_id": "ok", "message": "hi"}\nnot json\n{"custom_id": "x", "message": ""}\n'
    error = assert_error(a.post("/v1/batches", content=body), 422, "invalid_request")
    assert [d["line"] for d in error["details"]] == [2, 3]
    assert_error(a.get(f"/v1/batches/{uuid.uuid4().hex}"), 404, "not_found")


# Webhooks
class Receiver:
    """A tiny local webhook receiver: records each POST; answers from a script of status codes."""

    def __init__(self, statuses: list[int] | None = None):
        self.statuses = list(statuses or [])
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 204)
                self.end_headers()
                receiver.arrived.set()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def stored_job(r, keys: Keys, **fields) -> Job:
    job = Job(job_id=uuid.uuid4().hex, session_id="s", message="hi", status=JobStatus.succeeded, **fields)
    r.hset(keys.job(job.job_id), mapping=encode_job(job))
    r.expire(keys.job(job.job_id), 60)
    return job


def test_webhook_is_signed_retried_and_recorded(client):
    settings = signing(client.settings, webhook_backoff=0.05)
    keys = Keys(f"{client.settings.namespace}.t.hooks{uuid.uuid4().hex[:6]}")
    sender = WebhookSender(settings)
    with Receiver([500, 200]) as receiver:
        job = stored_job(client.r, keys, callback_url=receiver.url)
        status = sender.deliver(client.r, keys, job.job_id)
    assert status.status == "delivered" and status.attempts == 2 and status.last_status_code == 200
    assert len(receiver.received) == 2
    headers, body = receiver.received[-1]
    secret = settings.secret_for(keys.ns.rsplit(".t.", 1)[1])
    assert verify(body, secret, headers[SIGNATURE_HEADER])
    assert not verify(body, b"another tenant's secret", headers[SIGNATURE_HEADER])
    assert json.loads(body)["job_id"] == job.job_id and headers["X-Chatq-Event"] == "job.succeeded"
    record = client.r.hget(keys.job(job.job_id), "webhook")
    assert json.loads(record)["status"] == "delivered"


def test_webhook_gives_up_on_4xx_and_refuses_private_hosts(client):
    keys = Keys(f"{client.settings.namespace}.t.hooks{uuid.uuid4().hex[:6]}")
    with Receiver([410]) as receiver:
        job = stored_job(client.r, keys, callback_url=receiver.url)
        gone = WebhookSender(signing(client.settings)).deliver(client.r, keys, job.job_id)
        assert (gone.status, gone.attempts, gone.last_status_code) == ("failed", 1, 410)
        strict = WebhookSender(signing(client.settings, webhook_allow_private=False))
        refused = strict.deliver(client.r, keys, job.job_id)
    assert refused.status == "failed" and "non-public" in refused.last_error and len(receiver.received) == 1


def test_callback_url_needs_a_secret_and_a_public_host(fleet):
    unsigned = signing(fleet.settings, webhook_secret=None, webhook_allow_private=False)
    with serve(create_app(api_settings(), unsigned)) as url, http(url, KEY_A) as c:
        error = assert_error(c.post("/v1/chat", json={"message": "hi", "callback_url": "https://example.com/h"}), 422)
        assert "CHATQ_WEBHOOK_SECRET" in error["message"]
    strict = signing(fleet.settings, webhook_allow_private=False)
    with serve(create_app(api_settings(), strict)) as url, http(url, KEY_A) as c:
        for target in ("http://127.0.0.1:9/h", "http://localhost/h", "http://[::1]/h", "http://169.254.169.254/"):
            assert_error(c.post("/v1/chat", json={"message": "hi", "callback_url": target}), 422)


def test_webhook_delivered_by_the_worker_when_the_job_finishes(make_fleet):
    f = make_fleet(webhook_secret=MASTER_SECRET, webhook_allow_private="true", webhook_backoff="0.1")
    f.start_worker(4)
    settings = signing(f.settings)
    with Receiver() as receiver, serve(create_app(api_settings(), settings)) as url, http(url, KEY_A) as c:
        job = submit(c, "call me back", sid(), callback_url=receiver.url)
        assert job["callback_url"] == receiver.url
        assert finished(c, job["job_id"], 60)["status"] == "succeeded"
        assert receiver.arrived.wait(15), "no webhook arrived"
        headers, body = receiver.received[0]
        assert verify(body, settings.secret_for("acme"), headers[SIGNATURE_HEADER])
        delivered = json.loads(body)
        assert delivered["job_id"] == job["job_id"] and delivered["status"] == "succeeded"
        deadline = time.monotonic() + 10
        while (c.get(f"/v1/jobs/{job['job_id']}").json().get("webhook") or {}).get("status") != "delivered":
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_batch_callback_url_reaches_every_turn(make_fleet):
    f = make_fleet(webhook_secret=MASTER_SECRET, webhook_allow_private="true", webhook_backoff="0.1")
    f.start_worker(4)
    settings = signing(f.settings)
    body = "\n".join(json.dumps({"custom_id": f"c{i}", "messages": [f"hi {i}", f"again {i}"]}) for i in range(2))
    with Receiver() as receiver, serve(create_app(api_settings(), settings)) as url, http(url, KEY_A) as c:
        created = c.post("/v1/batches", params={"callback_url": receiver.url}, content=body,
                         headers={"content-type": "application/x-ndjson"})
        assert created.status_code == 202, created.text
        batch_id = created.json()["batch_id"]
        deadline = time.monotonic() + 60
        while len(receiver.received) < 4:
            assert time.monotonic() < deadline, f"{len(receiver.received)} of 4 webhooks arrived"
            time.sleep(0.05)
        records = [json.loads(b) for _, b in receiver.received]
        assert {r["batch_id"] for r in records} == {batch_id}
        assert sorted(r["message"] for r in records) == ["again 0", "again 1", "hi 0", "hi 1"]
        assert all(verify(b, settings.secret_for("acme"), h[SIGNATURE_HEADER]) for h, b in receiver.received)
        refused = c.post("/v1/batches", params={"callback_url": "ftp://nowhere"}, content=body,
                         headers={"content-type": "application/x-ndjson"})
        assert refused.status_code == 422


def test_cancel_delivers_the_webhook_from_the_api(a, fleet):
    with Receiver() as receiver:
        s = sid()
        first = submit(a, f"hold [[stall:1]] on {s}", s)
        second = submit(a, "cancel me", s, callback_url=receiver.url)
        for _ in range(2):
            assert a.post(f"/v1/jobs/{second['job_id']}/cancel").status_code == 200
        assert receiver.arrived.wait(10)
        finished(a, first["job_id"])
        assert len(receiver.received) == 1
        headers, body = receiver.received[0]
        assert headers["X-Chatq-Event"] == "job.cancelled"
        assert verify(body, signing(fleet.settings).secret_for("acme"), headers[SIGNATURE_HEADER])


def test_settings_parse_keys_and_secrets():
    s = ApiSettings(api_keys="k1:acme, k:with:colon:globex")
    assert s.api_keys == {"k1": "acme", "k:with:colon": "globex"} and s.tenants == ["acme", "globex"]
    core = Settings(webhook_secrets="acme:s:1")
    assert core.secret_for("acme") == b"s:1" and core.secret_for("globex") is None
    assert Settings(webhook_secret="m").secret_for("a") != Settings(webhook_secret="m").secret_for("b")
    with pytest.raises(ValueError, match="entry 1") as err:
        ApiSettings(api_keys="secret-key-without-tenant")
    assert "secret-key-without-tenant" not in str(err.value.errors(include_input=False))
