"""OpenTelemetry traces: one job's spans, parent-linked from its submission (over HTTP or from Python)
through its queue wait and its worker's run to each provider and tool call, across real processes;
sessions sharing a worker's event loop keep their own traces; with traces off, chatq never imports
opentelemetry.

The test's own spans go to the SDK's in-memory exporter (``tracing.use``); a ``chatq worker`` and a
``chatq serve`` configured by ``OTEL_TRACES_EXPORTER=console`` print theirs to their logs, read back here.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import SecretStr

from chatq.tasks import tracing
from chatq.tasks.client import ChatClient
from chatq.tasks.wakeups import WakePublisher

from .conftest import ROOT, Fleet

CONSOLE = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100"}
TOOL_TURN = 'Add please [[tool:add {"a": 2, "b": 3}]]'


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """This process's chatq spans (the producer's, an in-process runner's), kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    try:
        yield provider, exporter
    finally:
        tracing.use(None)


def tid(value: int) -> str:
    return format(value, "032x")


def sid(value: int) -> str:
    return format(value, "016x")


def from_memory(exporter: InMemorySpanExporter) -> list[dict]:
    """The exporter's spans as the console exporter prints them (the fields the tests read)."""
    out = []
    for s in exporter.get_finished_spans():
        out.append({"name": s.name, "trace_id": tid(s.context.trace_id), "span_id": sid(s.context.span_id),
                    "parent_id": sid(s.parent.span_id) if s.parent else None, "kind": str(s.kind),
                    "status": s.status.status_code.name, "attributes": dict(s.attributes or {}),
                    "events": [e.name for e in s.events], "start": s.start_time, "end": s.end_time,
                    "service": s.resource.attributes.get("service.name")})
    return out


def nanos(iso: str) -> int:
    return tracing.nanos(datetime.fromisoformat(iso.replace("Z", "+00:00")))


def from_log(path: Path) -> list[dict]:
    """The spans a process's console exporter printed into its log: indented JSON objects."""
    text, decoder, out, at = path.read_text(), json.JSONDecoder(), [], 0
    while (at := text.find('{\n    "name": ', at)) != -1:
        try:
            span, at = decoder.raw_decode(text, at)
        except ValueError:  # cut off: the exporter is still writing it
            break
        out.append({"name": span["name"], "trace_id": span["context"]["trace_id"][2:],
                    "span_id": span["context"]["span_id"][2:],
                    "parent_id": span["parent_id"][2:] if span["parent_id"] else None, "kind": span["kind"],
                    "status": span["status"]["status_code"], "attributes": span["attributes"],
                    "events": [e["name"] for e in span["events"]], "start": nanos(span["start_time"]),
                    "end": nanos(span["end_time"]), "service": span["resource"]["attributes"].get("service.name")})
    return out


def one(found: list[dict], name: str, **attributes: object) -> dict:
    matches = [s for s in found if s["name"] == name
               and all(s["attributes"].get(k) == v for k, v in attributes.items())]
    assert len(matches) == 1, f"{len(matches)} {name} spans with {attributes}: {[s['name'] for s in found]}"
    return matches[0]


def children(found: list[dict], parent: dict, name: str) -> list[dict]:
    return sorted((s for s in found if s["parent_id"] == parent["span_id"] and s["name"] == name),
                  key=lambda s: s["start"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(fleet: Fleet, env: dict[str, str], log: Path) -> Iterator[str]:
    """``chatq serve`` on a free port, as an operator starts it; yields its base URL."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "chatq", "serve", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"chatq serve exited:\n{log.read_text()[-3000:]}"
            try:
                httpx.get(f"{base}/healthz", timeout=5, trust_env=False)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, f"chatq serve did not answer:\n{log.read_text()[-3000:]}"
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def collect(sources: list[Path], trace_id: str, names: set[str], timeout: float = 20) -> list[dict]:
    """The spans of one trace the processes logged, once every name expected is among them (spans
    are exported in batches, a moment after they end)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [s for path in sources for s in from_log(path) if s["trace_id"] == trace_id]
        if names <= {s["name"] for s in found} or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_a_jobs_trace_runs_from_its_submission_to_its_provider_and_tool_calls(make_fleet, spans):
    """Real processes: a caller's span → ``chatq serve`` (FastAPI's request span, chatq.submit) →
    the job record → ``chatq worker`` (queue wait, the run, two provider calls around a tool call);
    and from Python: chatq.submit → the run, a retried provider call, a failed job."""
    provider, exporter = spans
    fleet = make_fleet()
    fleet.env.update(CONSOLE)
    worker = fleet.start_worker(8)
    worker_log = fleet.log_path(0)
    api_log = fleet.tmp / "serve.log"
    with serving(fleet, {**fleet.env, "OTEL_SERVICE_NAME": "api-under-test"}, api_log) as base:
        fleet.wait_ready(worker)
        client = fleet.client()
        session = f"otel-{uuid.uuid4().hex[:8]}"
        with provider.get_tracer("the-caller").start_as_current_span("caller") as caller:
            headers: dict[str, str] = {}
            inject(headers)  # the caller's traceparent, as any instrumented HTTP client sends it
            r = httpx.post(f"{base}/v1/sessions/{session}/messages", json={"message": TOOL_TURN}, headers=headers,
                           timeout=30, trust_env=False)
        assert r.status_code == 202, r.text
        over_http = client.wait(r.json()["job_id"], 30)
        retried = client.wait(client.submit(f"hello {session} [[fault:500 n=1]]", session).job_id, 30)
        failed = client.wait(client.submit(f"no {session} [[fault:400]]", session).job_id, 30)
    assert [over_http.status, retried.status, failed.status] == ["succeeded", "succeeded", "failed"]

    # Over HTTP: one trace, the caller's, down to the worker's provider and tool calls.
    trace_id = tid(caller.get_span_context().trace_id)
    assert over_http.traceparent is not None and over_http.traceparent.split("-")[1] == trace_id
    found = collect([api_log, worker_log], trace_id, {"chatq.submit", "chatq.job", "chatq.tool"})
    submit = one(found, "chatq.submit")
    assert submit["service"] == "api-under-test" and submit["kind"] == "SpanKind.PRODUCER"
    assert submit["attributes"] == {"chatq.job_id": over_http.job_id, "chatq.session_id": session,
                                    "chatq.agent": "default"}
    assert over_http.traceparent.split("-")[2] == submit["span_id"]
    by_id = {s["span_id"]: s for s in found}
    above, up = [], submit["parent_id"]
    while up in by_id:  # FastAPI's spans of the request, up to its server span
        above.append(by_id[up])
        up = by_id[up]["parent_id"]
    assert up == sid(caller.get_span_context().span_id), "the request continues the caller's trace"
    assert above and above[-1]["kind"] == "SpanKind.SERVER", above
    wait = one(found, "chatq.queue_wait")
    job = one(found, "chatq.job")
    assert wait["parent_id"] == job["parent_id"] == submit["span_id"]
    assert wait["start"] == tracing.nanos(over_http.created_at) and wait["end"] <= job["start"]
    assert job["kind"] == "SpanKind.CONSUMER" and job["service"] == "chatq-worker"
    assert job["attributes"]["chatq.job_id"] == over_http.job_id and job["attributes"]["chatq.attempt"] == 1
    assert job["attributes"]["chatq.session_id"] == session and job["attributes"]["chatq.status"] == "succeeded"
    calls = children(found, job, "chatq.provider_call")
    (tool,) = children(found, job, "chatq.tool")
    assert [c["attributes"]["chatq.outcome"] for c in calls] == ["ok", "ok"]
    assert calls[0]["end"] <= tool["start"] <= tool["end"] <= calls[1]["start"]
    assert calls[0]["attributes"]["gen_ai.request.model"] == "gpt-4o-mini" and calls[0]["kind"] == "SpanKind.CLIENT"
    assert calls[0]["attributes"]["gen_ai.response.finish_reasons"] == ["tool_calls"]
    assert sum(c["attributes"]["gen_ai.usage.output_tokens"] for c in calls) == over_http.result.usage.completion_tokens
    assert "first_token" in calls[1]["events"]
    assert tool["attributes"]["gen_ai.tool.name"] == "add" and tool["attributes"]["chatq.tool.ok"] is True

    # From Python: the submission's span is this process's; a retried call is two spans.
    for finished in (retried, failed):
        assert finished.traceparent is not None
    local = from_memory(exporter)
    retried_submit = one(local, "chatq.submit", **{"chatq.job_id": retried.job_id})
    assert retried_submit["parent_id"] is None
    found = collect([worker_log], retried_submit["trace_id"], {"chatq.job"})
    job = one(found, "chatq.job")
    assert job["parent_id"] == retried_submit["span_id"]
    calls = children(found, job, "chatq.provider_call")
    assert [(c["attributes"]["chatq.retry_attempt"], c["attributes"]["chatq.outcome"], c["status"]) for c in calls] \
        == [(0, "ProviderHTTP500", "ERROR"), (1, "ok", "UNSET")]
    failed_submit = one(local, "chatq.submit", **{"chatq.job_id": failed.job_id})
    found = collect([worker_log], failed_submit["trace_id"], {"chatq.job"})
    job = one(found, "chatq.job")
    assert job["status"] == "ERROR" and job["attributes"]["chatq.status"] == "failed"
    assert job["attributes"]["error.type"] == "ProviderHTTP400"
    assert len({retried_submit["trace_id"], failed_submit["trace_id"], trace_id}) == 3, "a trace per job"


def test_without_fastapis_telemetry_the_submit_route_starts_the_trace(make_fleet, spans):
    """An app whose FastAPI does not trace the request (this one: chatq's spans go to a provider it
    was handed, none is installed globally): chatq's own server span around the submission, child
    of the caller's span from its ``traceparent`` header."""
    from chatq.api.app import create_app
    from chatq.api.config import ApiSettings

    from .test_api import serve

    provider, exporter = spans
    fleet = make_fleet()  # no worker: the job stays queued
    try:
        with serve(create_app(ApiSettings(api_keys={}), fleet.settings)) as base:
            with provider.get_tracer("the-caller").start_as_current_span("caller") as caller:
                headers: dict[str, str] = {}
                inject(headers)
            r = httpx.post(f"{base}/v1/chat", json={"message": "hello"}, headers=headers, timeout=30, trust_env=False)
        assert r.status_code == 202, r.text
        found = from_memory(exporter)
        server = one(found, "POST /v1/chat")
        submit = one(found, "chatq.submit", **{"chatq.job_id": r.json()["job_id"]})
        assert server["kind"] == "SpanKind.SERVER" and server["parent_id"] == sid(caller.get_span_context().span_id)
        assert server["attributes"] == {"http.request.method": "POST", "http.route": "/v1/chat"}
        assert submit["parent_id"] == server["span_id"] and submit["trace_id"] == tid(caller.get_span_context().trace_id)
    finally:
        redis.Redis.from_url(fleet.settings.broker).delete(fleet.settings.queue)  # the wake-up nobody took


class NoWakeups(WakePublisher):
    def wake(self, session_id: str, namespace: str, job_id: str | None = None) -> None:
        pass  # this process runs every session itself


def test_sessions_sharing_an_event_loop_keep_their_own_traces(make_fleet, fake_openai, spans):
    """A runner in this process (real Redis, the SDK against the test server) drains sessions at once
    on one loop: each job's provider and tool spans are its own run's children, whatever the
    interleaving; a failed and a stopped run say so; a job submitted untraced starts its own trace."""
    provider, exporter = spans
    from chatq.worker.runner import SessionRunner

    fleet = make_fleet()  # no worker: its namespace and queue, run here
    settings = fleet.settings.model_copy(update={"openai_base_url": fake_openai.base_url,
                                                 "openai_api_key": SecretStr("test-key"), "idle_wait": 0})
    client = ChatClient(settings=settings, wakeups=NoWakeups(WakePublisher.shared(settings).app, settings.queue))
    tag = uuid.uuid4().hex[:6]
    turns = [client.submit(f'sum {i} {tag} [[tool:add {{"a": {i}, "b": 1}}]]', f"otel-{tag}-{i}") for i in range(6)]
    failed = client.submit(f"no {tag} [[fault:400]]", f"otel-{tag}-failed")
    stopped = client.submit(f"[[stall:10]] stop me {tag}", f"otel-{tag}-stopped")
    tracing.use(None)  # traces off for this producer
    untraced = client.submit(f"hello {tag}", f"otel-{tag}-untraced")
    tracing.use(provider)
    assert untraced.traceparent is None and all(j.traceparent for j in [*turns, failed, stopped])

    async def worker_side() -> None:
        ar = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        runner = SessionRunner(settings, ar, client.r, client.wakeups, "test:1")

        async def stop_when_calling() -> None:
            while stopped.job_id not in runner.live:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # inside its provider call, which stalls
            runner.stop_job(stopped.job_id, "keep")

        try:
            ran = await asyncio.gather(*(runner.drain(j.session_id, client.namespace, j.job_id)
                                         for j in [*turns, failed, stopped, untraced]), stop_when_calling())
            assert ran[:-1] == [1] * (len(turns) + 3)
        finally:
            await runner.provider.aclose()
            await ar.aclose()

    asyncio.run(worker_side())
    done = {j.job_id: client.get(j.job_id) for j in [*turns, failed, stopped, untraced]}
    assert [done[j.job_id].status for j in [*turns, failed, stopped, untraced]] == \
        ["succeeded"] * len(turns) + ["failed", "cancelled", "succeeded"]
    found = from_memory(exporter)

    for j in turns:
        submit = one(found, "chatq.submit", **{"chatq.job_id": j.job_id})
        job = one(found, "chatq.job", **{"chatq.job_id": j.job_id})
        wait = one(found, "chatq.queue_wait", **{"chatq.job_id": j.job_id})
        assert job["parent_id"] == wait["parent_id"] == submit["span_id"]
        assert wait["start"] == tracing.nanos(done[j.job_id].created_at)
        assert wait["end"] == tracing.nanos(done[j.job_id].started_at) <= job["start"]
        calls = children(found, job, "chatq.provider_call")
        assert [c["attributes"]["chatq.outcome"] for c in calls] == ["ok", "ok"]
        assert [t["attributes"]["gen_ai.tool.name"] for t in children(found, job, "chatq.tool")] == ["add"]
    # Nothing went astray: every call and tool span is under one of the runs, in that run's trace.
    runs = {s["span_id"]: s for s in found if s["name"] == "chatq.job"}
    for s in found:
        if s["name"] in ("chatq.provider_call", "chatq.tool"):
            assert s["parent_id"] in runs and runs[s["parent_id"]]["trace_id"] == s["trace_id"]
    assert len({s["trace_id"] for s in runs.values()}) == len(runs) == len(turns) + 3

    job = one(found, "chatq.job", **{"chatq.job_id": failed.job_id})
    (call,) = children(found, job, "chatq.provider_call")
    assert (job["status"], job["attributes"]["error.type"], call["status"], call["attributes"]["chatq.outcome"]) == \
        ("ERROR", "ProviderHTTP400", "ERROR", "ProviderHTTP400")
    job = one(found, "chatq.job", **{"chatq.job_id": stopped.job_id})
    (call,) = children(found, job, "chatq.provider_call")
    assert (job["status"], job["attributes"]["chatq.status"]) == ("UNSET", "cancelled")
    assert (call["status"], call["attributes"]["chatq.outcome"]) == ("UNSET", "cancelled")
    job = one(found, "chatq.job", **{"chatq.job_id": untraced.job_id})
    assert job["parent_id"] is None and len(children(found, job, "chatq.provider_call")) == 1
    assert not [s for s in found if s["attributes"].get("chatq.job_id") == untraced.job_id and s is not job]


WATCH = '''
import builtins, sys
_import = builtins.__import__
def _watch(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.split(".")[0] == "opentelemetry" and (globals or {}).get("__name__", "").startswith("chatq"):
        sys.stderr.write(f"CHATQ IMPORTS {name} in {globals['__name__']}\\n")
        sys.stderr.flush()
    return _import(name, globals, locals, fromlist, level)
builtins.__import__ = _watch
'''


def test_with_traces_off_chatq_never_imports_opentelemetry(make_fleet, tmp_path):
    """Every import statement chatq's code runs is watched (a ``sitecustomize``) in a real worker, a
    producer (``chatq chat``, a tool call included) and ``chatq serve`` taking a submission: with no
    ``OTEL_*`` variable, none imports opentelemetry, though it is installed (and its dependencies
    import it themselves: FastAPI, redis-py). With one, the watch sees chatq import it."""
    (tmp_path / "sitecustomize.py").write_text(WATCH)
    fleet = make_fleet()
    for name in [n for n in fleet.env if n.startswith("OTEL_")]:
        del fleet.env[name]
    fleet.env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    worker = fleet.start_worker(8)
    api_log = fleet.tmp / "serve.log"
    with serving(fleet, fleet.env, api_log) as base:
        fleet.wait_ready(worker)
        chat = subprocess.run([sys.executable, "-m", "chatq", "chat", TOOL_TURN, "--session", f"off-{tmp_path.name}"],
                              cwd=ROOT, env=fleet.env, capture_output=True, text=True, timeout=60)
        assert chat.returncode == 0 and "add=5.0" in chat.stdout, chat.stdout + chat.stderr
        r = httpx.post(f"{base}/v1/chat", json={"message": TOOL_TURN}, timeout=30, trust_env=False)
        assert r.status_code == 202, r.text
        job = fleet.client().wait(r.json()["job_id"], 30)
        assert job.status == "succeeded" and job.traceparent is None
    for output in (fleet.log_path(0).read_text(), api_log.read_text(), chat.stderr):
        assert "CHATQ IMPORTS" not in output, output[-3000:]
    on = subprocess.run([sys.executable, "-c", "from chatq.tasks import tracing; print(tracing.configure())"],
                        cwd=ROOT, env={**fleet.env, **CONSOLE}, capture_output=True, text=True, timeout=60)
    assert "CHATQ IMPORTS opentelemetry in chatq.tasks.tracing" in on.stderr, on.stdout + on.stderr
    assert "Tracer" in on.stdout
