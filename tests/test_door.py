"""Every door refuses bad input cleanly: the Python client, the CLI (real argv bytes) and the HTTP API
(a real uvicorn socket) get one table of bad inputs, each expecting the project's own error and
nothing written. Also: the 413 every client can read, one JSONL parser for CLI and HTTP, batch
records that expire unread, and the key in front of /metrics."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from chatq.api.app import create_app
from chatq.api.config import ApiSettings
from chatq.tasks.batch import BatchClient, BatchInvalid, BatchNotFound
from chatq.tasks.batch_input import jsonl_lines
from chatq.tasks.client import ChatClient, validate_metadata
from chatq.tasks.errors import InvalidRequest, JobNotFound
from chatq.tasks.urls import WebhookRefused, check_destination

from .conftest import ROOT
from .test_api import http, serve

T = uuid.uuid4().hex[:8]
SID = f"door-{T}"
KEY = "door-key-" + uuid.uuid4().hex
TENANT = "door"
BATCH_FILE = object()
"""Stands for a one-line batch file in CLI arguments (written by the test)."""
BATCH_LINE = {"custom_id": "one", "message": "hi"}


def post(path: str, body: Any = None, raw: bytes | None = None, **kwargs) -> tuple[str, str, dict]:
    """Bodies as bytes: ``json.dumps`` escapes a lone surrogate (and writes NaN) where httpx would refuse."""
    content = json.dumps(body).encode() if raw is None else raw
    return "POST", path, {"content": content, "headers": {"content-type": "application/json"}, **kwargs}


def message(**body) -> tuple[str, str, dict]:
    return post(f"/v1/sessions/{SID}/messages", {"message": "hi", **body})


def chat(**body) -> tuple[str, str, dict]:
    return post("/v1/chat", {"message": "hi", **body})


@dataclass(frozen=True)
class Bad:
    """One bad input as each door takes it; None where a door cannot express it."""

    case: str
    python: tuple[str, dict] | None
    cli: list | None
    http: tuple[str, str, dict] | None
    fragment: str = ""
    """In the Python and CLI error (the client's own message); HTTP may word it through its schema."""
    unknown: bool = False
    """An ID that can name nothing: not found (exit 1, 404, None or *NotFound), not refused."""


def sub(**kwargs) -> tuple[str, dict]:
    return "submit", {"message": "hi", "session_id": SID, **kwargs}


PRIVATE = ["http://127.0.0.1:9/h", "http://[::1]/h", "http://10.1.2.3/h", "http://169.254.169.254/latest",
           "http://localhost/h", "http://[::ffff:127.0.0.1]/h"]

TABLE = [
    Bad("undecodable bytes in the message", sub(message="\udcff\udcfeabc"),
        ["submit", b"\xff\xfeabc", "--session", SID],
        post(f"/v1/sessions/{SID}/messages", raw=b'{"message": "\xff\xfeabc"}'), "message is not valid text"),
    Bad("a lone surrogate in the message", sub(message="a\ud800b"), ["submit", b"a\xed\xa0\x80b", "--session", SID],
        post(f"/v1/sessions/{SID}/messages", raw=b'{"message": "a\\ud800b"}'), "lone surrogate"),
    Bad("a message that is not a string", sub(message=5), None, message(message=5), "message must be a string"),
    Bad("a message as bytes", sub(message=b"hi"), None, None, "message must be a string, not bytes"),
    Bad("a huge message", sub(message="x" * 40_000), ["submit", "x" * 40_000, "--session", SID],
        message(message="x" * 40_000), "the limit is 32000"),
    Bad("a blank message", sub(message=" \n "), ["submit", " \n ", "--session", SID], message(message=" \n "),
        "message is empty"),
    Bad("a content part of a type the API does not define", sub(message=[{"type": "video_url", "video_url": {}}]),
        None, message(message=[{"type": "video_url", "video_url": {}}]), "message[0] has type 'video_url'"),
    Bad("a content part with a lone surrogate", sub(message=[{"type": "text", "text": "a\ud800"}]), None,
        post(f"/v1/sessions/{SID}/messages", raw=b'{"message": [{"type": "text", "text": "a\\ud800"}]}'),
        "lone surrogate"),
    Bad("a parameter chatq does not take", sub(params={"n": 2}), ["submit", "hi", "--session", SID, "--param", "n=2"],
        message(params={"n": 2}), "params.n is a chat-completions parameter chatq does not take"),
    Bad("a parameter out of range", sub(params={"temperature": 5}),
        ["submit", "hi", "--session", SID, "--param", "temperature=5"], message(params={"temperature": 5}),
        "params.temperature is 5"),
    Bad("params that are not an object", sub(params=["temperature"]), None, message(params=["temperature"]),
        "params must be an object"),
    Bad("a --param that is not NAME=VALUE", None, ["submit", "hi", "--session", SID, "--param", "temperature"], None,
        "--param 'temperature' is not NAME=VALUE"),
    Bad("undecodable bytes in the session ID", sub(session_id="\udcff"), ["submit", "hi", "--session", b"\xff"],
        post("/v1/sessions/%FF/messages", {"message": "hi"}), "malformed session ID"),
    Bad("a lone surrogate in the session ID", sub(session_id="s\ud800"), None, chat(session_id="s\ud800"),
        "malformed session ID"),
    Bad("a session ID with a space", sub(session_id="bad id!"), ["submit", "hi", "--session", "bad id!"],
        chat(session_id="bad id!"), "malformed session ID"),
    Bad("a session ID of 200 characters", sub(session_id="s" * 200), ["submit", "hi", "--session", "s" * 200],
        chat(session_id="s" * 200), "malformed session ID"),
    Bad("a session ID ending in a newline", sub(session_id="abc\n"), None, chat(session_id="abc\n"),
        "malformed session ID"),
    Bad("an empty session ID", sub(session_id=""), ["submit", "hi", "--session", ""], chat(session_id=""),
        "malformed session ID"),
    Bad("a session ID that is not a string", sub(session_id=7), None, chat(session_id=7), "malformed session ID"),
    Bad("an idempotency key with a space", sub(idempotency_key="has space"),
        ["submit", "hi", "--session", SID, "--idempotency-key", "has space"], message(idempotency_key="has space"),
        "idempotency key"),
    Bad("undecodable bytes in the idempotency key", sub(idempotency_key="\udcff"),
        ["submit", "hi", "--session", SID, "--idempotency-key", b"\xff"], message(idempotency_key="\ud800"),
        "idempotency key"),
    Bad("an idempotency key of 201 characters", sub(idempotency_key="k" * 201), None,
        message(idempotency_key="k" * 201), "idempotency key"),
    Bad("an idempotency key that is not a string", sub(idempotency_key=12), None, message(idempotency_key=12),
        "idempotency key"),
    Bad("an agent given as a list", sub(agent=["default"]), None, message(agent=["default"]),
        "agent must be a string"),
    Bad("undecodable bytes in the agent", sub(agent="\udcff"), ["submit", "hi", "--session", SID, "--agent", b"\xff"],
        message(agent="\ud800"), "unknown agent"),
    Bad("an empty agent", sub(agent=""), ["submit", "hi", "--session", SID, "--agent", ""], message(agent=""),
        "unknown agent"),
    Bad("metadata with a non-string key", sub(metadata={1: "x"}), None, None, "keys must be strings"),
    Bad("metadata given as a list", sub(metadata=[]), ["submit", "hi", "--session", SID, "--metadata", "[]"],
        message(metadata=[]), "metadata must be a JSON object"),
    Bad("metadata given as a string", sub(metadata="x"), ["submit", "hi", "--session", SID, "--metadata", '"x"'],
        message(metadata="x"), "metadata must be a JSON object"),
    Bad("metadata holding NaN", sub(metadata={"x": float("nan")}),
        ["submit", "hi", "--session", SID, "--metadata", '{"x": NaN}'],
        post(f"/v1/sessions/{SID}/messages", raw=b'{"message": "hi", "metadata": {"x": NaN}}'), "NaN"),
    Bad("metadata holding a lone surrogate", sub(metadata={"k": ["\ud800"]}),
        ["submit", "hi", "--session", SID, "--metadata", b'{"k": ["\xff"]}'],
        post(f"/v1/sessions/{SID}/messages", raw=b'{"message": "hi", "metadata": {"k": ["\\ud800"]}}'),
        "metadata.k[0] is not valid text"),
    Bad("metadata holding a tuple", sub(metadata={"k": (1, 2)}), None, None, "metadata.k is a tuple"),
    Bad("metadata that is not JSON", None, ["submit", "hi", "--session", SID, "--metadata", "{"], None,
        "--metadata is not valid JSON"),
    Bad("an unknown on_busy", sub(on_busy="x"), ["submit", "hi", "--session", SID, "--on-busy", "x"],
        message(on_busy="x"), "on_busy"),
    Bad("on_busy given as a list", sub(on_busy=["reject"]), None, message(on_busy=["reject"]), "on_busy"),
    Bad("a file:// callback", sub(callback_url="file:///etc/passwd"),
        ["submit", "hi", "--session", SID, "--callback-url", "file:///etc/passwd"],
        message(callback_url="file:///etc/passwd"), "callback_url must be an http or https URL"),
    Bad("a callback that is not a string", sub(callback_url=5), None, message(callback_url=5), "callback_url"),
    Bad("a callback with undecodable bytes", sub(callback_url="http://example.com/\udcff"),
        ["submit", "hi", "--session", SID, "--callback-url", b"http://example.com/\xff"], None, "printable ASCII"),
    *[Bad(f"a callback to {url}", sub(callback_url=url),
          ["submit", "hi", "--session", SID, "--callback-url", url] if i == 0 else None,
          message(callback_url=url), "callback_url") for i, url in enumerate(PRIVATE)],
    Bad("get: undecodable job ID", ("get", {"job_id": "\udcff"}), ["get", b"\xff"], ("GET", "/v1/jobs/%FF", {}),
        unknown=True),
    Bad("get: a job ID that is not a string", ("get", {"job_id": None}), None, None, unknown=True),
    Bad("cancel: undecodable job ID", ("cancel", {"job_id": "\udcff"}), ["cancel", b"\xff"],
        ("POST", "/v1/jobs/%FF/cancel", {}), "unknown or expired job", unknown=True),
    Bad("wait: undecodable job ID", ("wait", {"job_id": "\udcff", "timeout": 1}), ["wait", b"\xff", "--timeout", "1"],
        ("GET", "/v1/jobs/%FF", {"params": {"wait": 1}}), "unknown or expired job", unknown=True),
    Bad("wait: a job ID with a space", ("wait", {"job_id": "a b", "timeout": 1}), ["wait", "a b", "--timeout", "1"],
        ("GET", "/v1/jobs/a%20b", {"params": {"wait": 1}}), "unknown or expired job", unknown=True),
    Bad("sessions show: undecodable ID", ("get_session", {"session_id": "\udcff"}), ["sessions", "show", b"\xff"],
        ("GET", "/v1/sessions/%FF", {}), "malformed session ID"),
    Bad("sessions delete: undecodable ID", ("delete_session", {"session_id": "\udcff"}),
        ["sessions", "delete", b"\xff"], ("DELETE", "/v1/sessions/%FF", {}), "malformed session ID"),
    Bad("batch status: undecodable ID", ("batch.status", {"batch_id": "\udcff"}), ["batch", "status", b"\xff"],
        ("GET", "/v1/batches/%FF", {}), "unknown or expired batch", unknown=True),
    Bad("a batch with a file:// callback", ("batch.submit", {"source": [BATCH_LINE], "callback_url": "file:///x"}),
        ["batch", "submit", BATCH_FILE, "--callback-url", "file:///x"],
        post("/v1/batches", raw=json.dumps(BATCH_LINE).encode(), params={"callback_url": "file:///x"}),
        "callback_url must be an http or https URL"),
    Bad("a batch with a private callback", ("batch.submit", {"source": [BATCH_LINE], "callback_url": PRIVATE[2]}),
        ["batch", "submit", BATCH_FILE, "--callback-url", PRIVATE[2]],
        post("/v1/batches", raw=json.dumps(BATCH_LINE).encode(), params={"callback_url": PRIVATE[2]}),
        "non-public address"),
]


def data_keys(r: redis.Redis, ns: str) -> set[str]:
    """The namespace's (and its tenants') data keys: not the workers' bookkeeping, which comes and goes."""
    keys = set(r.scan_iter(f"{ns}:*", count=1000)) | set(r.scan_iter(f"{ns}.t.*", count=1000))
    bookkeeping = (":sweep-lock", ":namespaces", ":agents", ":agent-overrides", ":pending", ":woken")
    return {k for k in keys if not (k.endswith(bookkeeping)
                                    or any(f":{part}:" in k for part in ("idle", "handed", "stop")))}


@pytest.fixture(scope="module")
def door(fleet, tmp_path_factory):
    """The three doors on the shared fleet: a client, the CLI's argv, the API with one tenant."""
    batch_file = tmp_path_factory.mktemp("door") / "one.jsonl"
    batch_file.write_text(json.dumps(BATCH_LINE) + "\n")
    api = ApiSettings(api_keys={KEY: TENANT})
    signing = fleet.settings.model_copy(update={"webhook_secret": SecretStr("door-secret")})
    with serve(create_app(api, signing)) as url, http(url, KEY) as c:
        assert c.get("/v1/sessions").status_code == 200  # the tenant's client exists before any snapshot
        yield fleet, c, batch_file


def run_cli(fleet, args: list, batch_file: Path) -> subprocess.CompletedProcess:
    argv = [batch_file if a is BATCH_FILE else a for a in args]
    return subprocess.run([sys.executable, "-m", "chatq", *argv], cwd=ROOT, env=fleet.env,
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("bad", TABLE, ids=[b.case for b in TABLE])
def test_every_door_refuses_bad_input_cleanly_and_writes_nothing(door, bad: Bad):
    fleet, c, batch_file = door
    client = fleet.client()
    r, ns = client.r, fleet.settings.namespace
    before = data_keys(r, ns)

    if bad.python is not None:
        method, kwargs = bad.python
        target = BatchClient(client) if method.startswith("batch.") else client
        call = getattr(target, method.removeprefix("batch."))
        if bad.unknown and method == "get":
            assert call(**kwargs) is None
        else:
            with pytest.raises(JobNotFound if bad.unknown and "batch" not in method else
                               BatchNotFound if bad.unknown else InvalidRequest, match=re.escape(bad.fragment)):
                call(**kwargs)
        assert data_keys(r, ns) <= before, "the Python client wrote something"

    if bad.cli is not None:
        out = run_cli(fleet, bad.cli, batch_file)
        stderr = out.stderr.decode("utf-8")  # strictly: whatever it quotes must print
        assert "Traceback" not in stderr and out.stdout == b"", stderr
        if bad.unknown:
            assert out.returncode == 1 and stderr.startswith("error: unknown or expired"), stderr
        elif stderr.startswith("Usage:"):  # click's own usage error
            assert out.returncode == 2 and "Error: Invalid value" in stderr, stderr
        else:
            assert out.returncode == 2 and stderr.startswith("error: ") and len(stderr.splitlines()) == 1, stderr
            assert bad.fragment in stderr, stderr
        assert data_keys(r, ns) <= before, "the CLI wrote something"

    if bad.http is not None:
        method, path, kwargs = bad.http
        resp = c.request(method, path, **kwargs)
        status, type_ = (404, "not_found") if bad.unknown else (422, "invalid_request")
        assert resp.status_code == status, resp.text
        error = resp.json()["error"]
        assert error["type"] == type_ and error["message"], error
        assert data_keys(r, ns) <= before, "the HTTP API wrote something"


# Pure rules
@pytest.mark.parametrize("url,allowed", [
    ("https://example.com/hook", True), ("http://example.com:8080/h?x=1", True), ("https://93.184.216.34/", True),
    ("file:///etc/passwd", False), ("ftp://example.com/", False), ("http:///nohost", False),
    ("http://example.com:99999/", False), ("http://exa mple.com/", False), ("https://exämple.com/", False),
    ("http://example.com/\udcff", False), ("http://" + "a" * 2100 + ".com/", False),
    *[(url, False) for url in PRIVATE], ("http://0.0.0.0/", False), ("http://[fe80::1]/", False),
])
def test_callback_destinations(url, allowed):
    if allowed:
        assert check_destination(url, allow_private=False, resolve=False) == url
    else:
        with pytest.raises(WebhookRefused):
            check_destination(url, allow_private=False, resolve=False)
        assert issubclass(WebhookRefused, InvalidRequest)


def test_private_callbacks_pass_only_when_allowed():
    assert check_destination("http://127.0.0.1:9/h", allow_private=True) == "http://127.0.0.1:9/h"
    with pytest.raises(WebhookRefused, match="http or https"):
        check_destination("file:///etc/passwd", allow_private=True)


def test_metadata_is_taken_exactly_as_given():
    nested = {"a": [1, 2.5, True, None, {"b": "c"}], "é": "ü"}
    assert validate_metadata(nested, 1000) is nested and validate_metadata(None, 10) == {}
    for bad, fragment in [({1: "x"}, "keys must be strings"), ({"x": float("inf")}, "infinity"),
                          ({"x": {1, 2}}, "is a set"), ({"x": b"y"}, "is a bytes"), ({"\ud800": 1}, "a key of"),
                          ({"x": "y" * 100}, "the limit is 50"), ([], "JSON object")]:
        with pytest.raises(InvalidRequest, match=fragment):
            validate_metadata(bad, 50)


def test_client_ids_that_cannot_name_anything_are_unknown(client: ChatClient):
    for odd in ("\udcff", "", "a b", "x" * 300, None, 7):
        assert client.get(odd) is None
        with pytest.raises(JobNotFound):
            client.cancel(odd)


# One JSONL parser for the CLI and HTTP
TRICKY = (
    b"\xef\xbb\xbf" + json.dumps({"custom_id": "ls", "message": "a\u2028b"}, ensure_ascii=False).encode() + b"\n"
    + json.dumps({"custom_id": "nel", "messages": ["c\u0085d", "e\u2029f"]}, ensure_ascii=False).encode() + b"\r\n"
    + b"  \r\n"
    + b'{"custom_id": "bad", "message": "\xff"}\n'
    + b'{"custom_id": "cr", "message": "g"}\r{"custom_id": "cr2", "message": "h"}\n'
    + b'{"custom_id": "last", "message": "no newline at the end"}'
)
TRICKY_MESSAGES = {"ls": ["a\u2028b"], "nel": ["c\u0085d", "e\u2029f"], "last": ["no newline at the end"]}


def test_jsonl_lines_split_on_newline_only():
    lines = [line for _, line in jsonl_lines(TRICKY)]
    assert len(lines) == 6 and lines[0].startswith(b'{"custom_id": "ls"') and lines[2] == b"  \r\n"
    assert [n for n, _ in jsonl_lines(b"a\nb")] == [1, 2]


def test_cli_http_and_python_read_the_same_tricky_file_the_same_way(fleet, tmp_path):
    path = tmp_path / "tricky.jsonl"
    path.write_bytes(TRICKY)
    client = fleet.client()
    batches = BatchClient(client)
    with serve(create_app(ApiSettings(), fleet.settings)) as url, http(url) as c:
        # Refused whole, with the same lines named by each door.
        with pytest.raises(BatchInvalid) as refused:
            batches.submit(path)
        expected = [(e.line, e.error) for e in refused.value.errors]
        assert [line for line, _ in expected] == [4, 5]
        assert "not UTF-8: byte 0xff" in expected[0][1] and "not valid JSON: Extra data" in expected[1][1]
        out = subprocess.run([sys.executable, "-m", "chatq", "batch", "submit", str(path)], cwd=ROOT,
                             env=fleet.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and all(f"line {n}: {e}" in out.stderr for n, e in expected), out.stderr
        resp = c.post("/v1/batches", content=TRICKY)
        assert resp.status_code == 422
        assert [(d["line"], d["error"]) for d in resp.json()["error"]["details"]] == expected

        # Skipping the bad lines: the same conversations, with U+2028, NEL and U+2029 kept in their turns.
        infos = {
            "python": batches.submit(path, skip_invalid=True).model_dump(mode="json"),
            "cli": json.loads(subprocess.run(
                [sys.executable, "-m", "chatq", "batch", "submit", "-", "--skip-invalid"], input=TRICKY,
                cwd=ROOT, env=fleet.env, capture_output=True, timeout=60, check=True).stdout),
            "http": c.post("/v1/batches", params={"skip_invalid": True}, content=TRICKY).json(),
        }
    for door, info in infos.items():
        assert (info["total"], info["turns"], [e["line"] for e in info["skipped"]]) == (3, 4, [4, 5]), door
        for entry in batches.store.entries(info["batch_id"]):
            assert [j.message for j in client.jobs.get_many(entry.job_ids)] == TRICKY_MESSAGES[entry.custom_id]
        batches.wait(info["batch_id"], timeout=60)


# Batch records expire, read or not
def test_batch_records_outlive_their_jobs_and_expire_unread(make_fleet):
    f = make_fleet(result_ttl="2", batch_max_idle="30")
    f.start_worker(4)
    client = f.client()
    batches = BatchClient(client)
    info = batches.submit([{"custom_id": f"c{i}", "messages": [f"hi {i}", f"again {i}"]} for i in range(3)])
    keys = [batches.store.key(info.batch_id), batches.store.conversations_key(info.batch_id)]
    assert all(2 < client.r.ttl(k) <= 32 for k in keys)  # unfinished: result TTL + the idle bound
    job_ids = [j for e in batches.store.entries(info.batch_id) for j in e.job_ids]  # a raw read, no status
    for job_id in job_ids:
        assert client.wait(job_id, 60).status == "succeeded"
    deadline = time.monotonic() + 10
    while not client.r.hexists(keys[0], "finished_at"):  # marked by the worker's last commit
        assert time.monotonic() < deadline, "nobody marked the batch finished"
        time.sleep(0.05)
    now_ms = time.time() * 1000
    job_expiry = [client.r.pexpiretime(client.keys.job(j)) for j in job_ids]  # absolute: reads need no snapshot
    batch_expiry = [client.r.pexpiretime(k) for k in keys]
    assert now_ms < max(job_expiry) <= min(batch_expiry) <= now_ms + 2000, (job_expiry, batch_expiry)
    deadline = time.monotonic() + 10
    while any(client.r.exists(k) for k in keys):
        assert time.monotonic() < deadline, [client.r.ttl(k) for k in keys]
        time.sleep(0.1)
    assert not any(client.r.exists(client.keys.job(j)) for j in job_ids)


def test_a_batch_no_worker_ever_runs_expires_after_the_idle_bound(make_fleet):
    f = make_fleet(result_ttl="1", batch_max_idle="1")
    client = f.client()
    try:
        batches = BatchClient(client)
        info = batches.submit([{"custom_id": "c", "message": "nobody runs me"}])
        assert batches.status(info.batch_id).turns.queued == 1
        deadline = time.monotonic() + 10
        while True:
            try:
                batches.store.meta(info.batch_id)
            except BatchNotFound:
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert not client.r.exists(batches.store.conversations_key(info.batch_id))
    finally:
        redis.Redis.from_url(f.settings.broker).delete(f.settings.queue)  # the wake-up no worker took


# The 413 every client can read
@pytest.fixture(scope="module")
def small_limit_url(fleet):
    with serve(create_app(ApiSettings(max_body_bytes=64 * 1024), fleet.settings)) as url:
        yield url


def test_urllib_sending_8_mb_reads_the_413(small_limit_url):
    """urllib sends the whole body before reading: the server must read (and drop) it, not reset."""
    body = b'{"message": "' + b"x" * (8 << 20) + b'"}'

    def chunked():  # no Content-Length: counted as it streams
        for i in range(0, len(body), 1 << 16):
            yield body[i:i + (1 << 16)]

    for data in (body, chunked()):
        request = urllib.request.Request(f"{small_limit_url}/v1/chat", data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=60)
        assert caught.value.code == 413
        error = json.loads(caught.value.read())["error"]
        assert error["type"] == "payload_too_large" and "65536" in error["message"]
        caught.value.close()


@pytest.mark.parametrize("extra", [b"Expect: 100-continue\r\n", b""], ids=["expect-100-continue", "over-the-cap"])
def test_a_413_comes_at_once_when_no_body_should_be_read(small_limit_url, extra):
    """A client waiting for 100-continue has sent nothing, and a body over the drain cap is not read:
    either way the 413 comes without the server waiting for a body."""
    host, port = small_limit_url.removeprefix("http://").split(":")
    length = 8 << 20 if extra else 1 << 40
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /v1/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Content-Length: {length}\r\n".encode() + extra + b"\r\n")
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(4096)  # times out (fails) if the server waits for the body
            assert chunk, reply
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in reply


# /metrics behind a key
@pytest.mark.parametrize("settings,allowed,refused", [
    (dict(api_keys={KEY: TENANT}, metrics_key="mk"), ["mk"], [None, KEY, "nope"]),
    (dict(api_keys={KEY: TENANT}), [], [None, KEY, "mk"]),
    (dict(api_keys={KEY: TENANT}, metrics_open=True), [None, "anything"], []),
    (dict(), [None], []),
    (dict(metrics_key="mk"), ["mk"], [None, "nope"]),
], ids=["own-key", "keys-but-no-metrics-key", "opened", "open-api", "open-api-with-a-metrics-key"])
def test_metrics_needs_its_own_key(fleet, settings, allowed, refused):
    with serve(create_app(ApiSettings(**settings), fleet.settings)) as url:
        for key in allowed:
            with http(url, key) as c:
                r = c.get("/metrics")
                assert r.status_code == 200 and "chatq_redis_up 1.0" in r.text, key
        for key in refused:
            with http(url, key) as c:
                r = c.get("/metrics")
                assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized", key
                assert r.headers["WWW-Authenticate"] == "Bearer" and "chatq_" not in r.text
        with http(url) as c:
            assert c.get("/healthz").status_code in (200, 503)  # probes need no key either way
