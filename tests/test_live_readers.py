"""Live turns outside Python: the HTTP event stream (Server-Sent Events), stop over HTTP, and the CLI's
streaming `chat`, `events` and `cancel`, through uvicorn, real Redis and the shared fleet's workers."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from chatq.api import streams
from chatq.api.app import create_app
from chatq.tasks.events import AsyncEventLog
from chatq.tasks.keys import Keys
from chatq.tasks.models import JobEvent
from chatq.tasks.redis_pool import get_async_redis

from .conftest import REDIS_URL, ROOT
from .test_api import a, assert_error, b, base_url, finished, sid, submit  # noqa: F401  (fixtures)

LONG = "[[stream words=40 delay=0.02]]"
"""A reply of about 40 words streamed over about a second: several delta events."""


def parse_sse(lines: Iterator[str]) -> Iterator[dict]:
    """Server-Sent Events as the spec reads them: fields up to a blank line; comments as ``{"comment"}``."""
    event: dict = {}
    for line in lines:
        if line == "":
            if event:
                yield event
            event = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[field] = event[field] + "\n" + value if field == "data" and "data" in event else value
    if event:
        yield event


def as_event(sse: dict) -> JobEvent:
    return JobEvent(seq=int(sse["id"]), type=sse["event"], data=json.loads(sse["data"]))


class Reader:
    """An open SSE response, read event by event: its events, and the comments among them."""

    def __init__(self, r: httpx.Response):
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        self._sse = parse_sse(r.iter_lines())
        self.comments: list[str] = []

    def take(self, n: int | None = None) -> list[JobEvent]:
        """The next ``n`` events, or all until the stream ends."""
        events: list[JobEvent] = []
        for sse in self._sse:
            if "comment" in sse:
                self.comments.append(sse["comment"])
                continue
            assert sse.get("event") != "error", sse
            events.append(as_event(sse))
            if len(events) == n:
                break
        return events


def read_stream(r: httpx.Response, stop_after: int | None = None) -> tuple[list[JobEvent], list[str]]:
    reader = Reader(r)
    return reader.take(stop_after), reader.comments


def stream_events(c: httpx.Client, job_id: str, headers: dict | None = None, **params) -> list[JobEvent]:
    with c.stream("GET", f"/v1/jobs/{job_id}/events", params=params, headers=headers or {}) as r:
        return read_stream(r)[0]


def assert_whole(events: list[JobEvent], first: int = 1) -> None:
    """Gap-free from ``first``, and ending with exactly one terminal event."""
    assert [e.seq for e in events] == list(range(first, first + len(events))), [e.seq for e in events]
    assert events[-1].terminal and not any(e.terminal for e in events[:-1])


def text_of(events: list[JobEvent]) -> str:
    return "".join(e.data["text"] for e in events if e.type == "message.delta")


def running(c: httpx.Client, job_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while (job := c.get(f"/v1/jobs/{job_id}").json())["status"] == "queued":
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    assert job["status"] == "running", job
    return job


# The event stream
def test_events_stream_id_event_data_until_the_terminal_event(a):
    job = submit(a, f"{LONG} tell me a story", sid(), stream=True)  # a reader will follow it
    with a.stream("GET", f"/v1/jobs/{job['job_id']}/events") as r:
        events, _ = read_stream(r)
        assert r.headers["cache-control"] == "no-store"
    assert_whole(events)  # and the response ended by itself after it
    assert events[0].type == "job.started" and events[0].data["attempt"] == 1
    assert sum(e.type == "message.delta" for e in events) >= 2
    done = finished(a, job["job_id"])
    assert events[-1].type == "job.succeeded" and events[-1].data["job_id"] == job["job_id"]
    assert events[-1].data["status"] == "succeeded" and events[-1].data["result"] == done["result"]
    assert text_of(events) == done["result"]["content"]


def test_resume_with_last_event_id_or_after_sees_the_rest_exactly_once(a):
    job = submit(a, f"{LONG} resume me", sid(), stream=True)
    with a.stream("GET", f"/v1/jobs/{job['job_id']}/events") as r:
        head, _ = read_stream(r, stop_after=2)  # then hang up mid-stream
    rest = stream_events(a, job["job_id"], headers={"Last-Event-ID": str(head[-1].seq)})
    assert_whole(head + rest)
    whole = stream_events(a, job["job_id"])
    assert head + rest == whole
    for k in (1, len(whole) - 2):
        assert stream_events(a, job["job_id"], headers={"Last-Event-ID": str(k)}) == whole[k:]
        assert stream_events(a, job["job_id"], after=k) == whole[k:]
    # The header wins over the query.
    assert stream_events(a, job["job_id"], headers={"Last-Event-ID": "3"}, after=1) == whole[3:]
    # After the terminal event nothing can follow: 204 (an EventSource stops reconnecting).
    past = a.get(f"/v1/jobs/{job['job_id']}/events", headers={"Last-Event-ID": str(whole[-1].seq)})
    assert past.status_code == 204 and past.content == b""
    assert_error(a.get(f"/v1/jobs/{job['job_id']}/events", headers={"Last-Event-ID": "x"}), 422, "invalid_request")
    assert_error(a.get(f"/v1/jobs/{job['job_id']}/events", params={"after": -1}), 422, "invalid_request")


def test_another_tenants_or_an_unknown_jobs_events_are_404(a, b):
    job = finished(a, submit(a, "mine", sid())["job_id"])
    assert_error(b.get(f"/v1/jobs/{job['job_id']}/events"), 404, "not_found")
    for job_id in (uuid.uuid4().hex, "nope", "a" * 31 + ":"):
        assert_error(a.get(f"/v1/jobs/{job_id}/events"), 404, "not_found")


def test_an_expired_log_is_410_and_the_job_is_still_there(a, fleet):
    job = finished(a, submit(a, "forget my events", sid())["job_id"])
    r = redis.Redis.from_url(fleet.redis_url)
    assert r.delete(Keys(f"{fleet.settings.namespace}.t.acme").events(job["job_id"])) == 1
    error = assert_error(a.get(f"/v1/jobs/{job['job_id']}/events"), 410, "gone")
    assert "expired" in error["message"]
    assert a.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "succeeded"


def test_an_error_once_streaming_is_the_streams_last_event(a, fleet):
    """Past the headers a status cannot change: the stream says why it ends, as the API's error shape."""
    job = finished(a, submit(a, "gone mid-stream", sid())["job_id"])
    keys = Keys(f"{fleet.settings.namespace}.t.acme")
    redis.Redis.from_url(fleet.redis_url).delete(keys.events(job["job_id"]))

    async def read() -> list:
        r = get_async_redis(fleet.redis_url)
        try:
            return [e async for e in streams.events(AsyncEventLog(r, keys), job["job_id"], 0)]
        finally:
            await r.aclose()

    [last] = asyncio.run(read())
    assert last.event == "error" and last.id is None
    assert json.loads(last.data)["error"]["type"] == "gone"


@pytest.mark.parametrize("path", ["/v1/chat", "/v1/sessions/{s}/messages"])
def test_submit_with_stream_true_answers_with_the_stream(a, path):
    s = sid()
    url = path.format(s=s)
    body = {"message": f"{LONG} stream at once", **({"session_id": s} if path == "/v1/chat" else {})}
    with a.stream("POST", url, params={"stream": "true"}, json=body) as r:
        location = r.headers["Location"]
        events, _ = read_stream(r)
    assert_whole(events)
    job_id = events[-1].data["job_id"]
    assert location.endswith(f"/v1/jobs/{job_id}") and events[-1].data["session_id"] == s
    assert events[-1].type == "job.succeeded" and text_of(events) == events[-1].data["result"]["content"]
    # Bad input is refused as ever, before any stream.
    assert_error(a.post(url, params={"stream": "true"}, json={**body, "message": ""}), 422, "invalid_request")
    assert_error(a.post(url, params={"stream": "nope"}, json=body), 422, "invalid_request")


# Stopping a running job
def assert_stopping(r: httpx.Response, mode: str) -> None:
    """The answer to stopping a running job: 202 while it still runs, or 200 if its worker was quicker."""
    job = r.json()
    assert (r.status_code, job["status"]) in {(202, "running"), (200, "cancelled")}, r.text
    assert job["cancel"] == mode


def test_cancel_a_running_job_over_http_ends_it_cancelled(a):
    s = sid()
    job = submit(a, "[[stall:5]] stop me", s)
    with a.stream("GET", f"/v1/jobs/{job['job_id']}/events") as r:
        reader = Reader(r)
        started = reader.take(1)
        assert started[0].type == "job.started"
        stop = a.post(f"/v1/jobs/{job['job_id']}/cancel")
        assert_stopping(stop, "keep")
        rest = reader.take()
    assert_whole(started + rest)
    assert rest[-1].type == "job.cancelled" and rest[-1].data["status"] == "cancelled"
    assert finished(a, job["job_id"])["status"] == "cancelled"
    again = a.post(f"/v1/jobs/{job['job_id']}/cancel")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    history = a.get(f"/v1/sessions/{s}").json()["messages"]
    assert history[0]["role"] == "user" and history[0]["content"] == "[[stall:5]] stop me"
    # The session goes on with its next message.
    assert finished(a, submit(a, "after the stop", s)["job_id"])["status"] == "succeeded"


def test_cancel_with_rollback_leaves_no_trace(a):
    s = sid()
    job = submit(a, "[[stall:5]] never happened", s)
    running(a, job["job_id"])
    assert_stopping(a.post(f"/v1/jobs/{job['job_id']}/cancel", params={"rollback": "true"}), "rollback")
    assert finished(a, job["job_id"])["status"] == "cancelled"
    assert a.get(f"/v1/sessions/{s}").json()["messages"] == []


def test_a_quiet_stream_gets_keep_alive_comments(a):
    job = submit(a, "[[stall:4]] take your time", sid())
    with a.stream("GET", f"/v1/jobs/{job['job_id']}/events") as r:
        events, comments = read_stream(r)
    assert_whole(events)
    assert "keep-alive" in comments


def test_on_busy_interrupt_over_http_stops_the_running_turn(a):
    s = sid()
    first = submit(a, "[[stall:5]] interrupted", s)
    running(a, first["job_id"])
    second = submit(a, "instead", s, on_busy="interrupt")
    assert finished(a, first["job_id"])["status"] == "cancelled"
    assert finished(a, second["job_id"])["status"] == "succeeded"
    rolled = submit(a, "[[stall:5]] rolled back", s)
    running(a, rolled["job_id"])
    third = submit(a, "and again", s, on_busy="rollback")
    assert finished(a, third["job_id"])["status"] == "succeeded"
    contents = [m["content"] for m in a.get(f"/v1/sessions/{s}").json()["messages"] if m["role"] == "user"]
    assert contents == ["[[stall:5]] interrupted", "instead", "and again"]


def test_the_event_hub_reads_every_followed_log_at_once_and_wakes_for_a_newcomer():
    """The API's streams wait on one XREAD: a follower that joins while it is blocked (on logs with
    nothing new, for up to a minute here) is read at once, and each follower gets the entries after
    its own place, however many follow one log."""
    from chatq.tasks.event_hub import EventHub

    keys = Keys(f"hub{uuid.uuid4().hex[:8]}")
    quiet, busy = keys.events("a" * 32), keys.events("b" * 32)
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    r.xadd(quiet, {"t": "job.started", "d": "{}"}, id="1-0")

    async def scenario():
        ar = get_async_redis(REDIS_URL, 8, socket_timeout=120)
        hub = EventHub(ar, keys.doorbell("test"), block_seconds=60)
        try:
            waiting = hub.subscribe(quiet, 1)
            first = asyncio.ensure_future(waiting.next())
            await asyncio.sleep(0.2)  # the hub's read is blocked on the quiet log alone
            assert not first.done()
            r.xadd(busy, {"t": "job.started", "d": "{}"}, id="1-0")
            r.xadd(busy, {"t": "message.delta", "d": '{"text":"hi"}'}, id="2-0")
            newcomer, behind = hub.subscribe(busy, 1), hub.subscribe(busy, 0)
            got = await asyncio.wait_for(newcomer.next(), 10), await asyncio.wait_for(behind.next(), 10)
            r.xadd(quiet, {"t": "job.succeeded", "d": "{}"}, id="2-0")
            last = await asyncio.wait_for(first, 10)
            for sub in (waiting, newcomer, behind):
                sub.close()
            return got, last
        finally:
            await ar.aclose()

    try:
        (after_1, after_0), last = asyncio.run(scenario())
    finally:
        r.delete(quiet, busy, keys.doorbell("test"))
    assert [eid for eid, _ in after_1] == ["2-0"] and [eid for eid, _ in after_0] == ["1-0", "2-0"]
    assert [eid for eid, _ in last] == ["2-0"]


# The CLI
def cli(fleet, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatq", *args], cwd=ROOT, env=fleet.env,
                          capture_output=True, text=True, timeout=timeout)


def json_lines(text: str) -> list[JobEvent]:
    return [JobEvent.model_validate_json(line) for line in text.splitlines()]


def test_cli_chat_prints_the_reply_as_it_streams(fleet, client):
    s = sid("cli")
    out = cli(fleet, "chat", f"{LONG} My name is Dave", "--session", s)
    assert out.returncode == 0, out.stderr
    reply = client.get_session(s).messages[-1].content
    assert reply and out.stdout == reply + "\n"
    assert out.stderr == f"[session {s}]\n"


def test_cli_chat_json_prints_events_ending_with_the_job(fleet, client):
    s = sid("cli")
    out = cli(fleet, "chat", "hello there", "--session", s, "--json")
    assert out.returncode == 0, out.stderr
    events = json_lines(out.stdout)
    assert_whole(events)
    assert events[0].type == "job.started" and events[-1].type == "job.succeeded"
    assert events[-1].data["result"]["content"] == client.get_session(s).messages[-1].content == text_of(events)


def test_cli_chat_restarts_the_reply_after_a_provider_retry(fleet, client):
    s = sid("cli")
    out = cli(fleet, "chat", "[[cut after=6 n=1]] [[stream delay=0.05 words=30]] cut me off", "--session", s)
    assert out.returncode == 0, out.stderr
    assert "provider call failed" in out.stderr and "the reply starts over" in out.stderr, out.stderr
    reply = client.get_session(s).messages[-1].content
    assert out.stdout.endswith("\n" + reply + "\n"), out.stdout  # the cut text stays, on a line of its own


def test_cli_chat_failed_or_unfinished_job_exits_1(fleet):
    out = cli(fleet, "chat", "[[fault:400]] refuse me")
    assert out.returncode == 1 and out.stderr.startswith("error: job ") and " failed: " in out.stderr, out.stderr
    assert "[session" not in out.stderr
    slow = cli(fleet, "chat", "[[stall:3]] too slow", "--timeout", "0.5")
    assert slow.returncode == 1 and slow.stderr.startswith("error: ") and "within 0.5" in slow.stderr, slow.stderr


def test_cli_events_now_and_following(fleet, client):
    submitted = cli(fleet, "submit", f"{LONG} follow me", "--session", sid("cli"), "--stream")
    assert submitted.returncode == 0, submitted.stderr
    job = client.get(json.loads(submitted.stdout)["job_id"])
    follow = subprocess.Popen([sys.executable, "-m", "chatq", "events", job.job_id, "--follow"], cwd=ROOT,
                              env=fleet.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = follow.communicate(timeout=60)
    assert follow.returncode == 0, err
    followed = json_lines(out)
    assert_whole(followed)
    assert followed == list(client.stream(job.job_id))
    now = cli(fleet, "events", job.job_id)
    assert now.returncode == 0 and json_lines(now.stdout) == followed
    after = cli(fleet, "events", job.job_id, "--after", "2")
    assert json_lines(after.stdout) == followed[2:]
    unknown = cli(fleet, "events", uuid.uuid4().hex)
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: unknown or expired job"), unknown.stderr


def test_cli_events_without_follow_returns_at_once_on_a_running_job(fleet, client):
    job = client.submit("[[stall:60]] still going", sid("cli"))  # cancelled at the end
    for event in client.stream(job.job_id):
        break  # job.started is in the log
    now = cli(fleet, "events", job.job_id)
    assert now.returncode == 0, now.stderr
    assert [e.type for e in json_lines(now.stdout)] == ["job.started"]
    client.cancel(job.job_id)


def test_cli_cancel_stops_a_running_job(fleet, client):
    s = sid("cli")
    job = client.submit("[[stall:60]] stop me from the shell", s)
    next(iter(client.stream(job.job_id)))  # it has started
    out = cli(fleet, "cancel", job.job_id, "--rollback")
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["status"] in ("running", "cancelled") and shown["cancel"] == "rollback"
    assert client.wait(job.job_id, 10).status == "cancelled"
    assert client.get_session(s).messages == []
    again = cli(fleet, "cancel", job.job_id)
    assert again.returncode == 0 and json.loads(again.stdout)["status"] == "cancelled"


def test_cli_submit_on_busy_interrupt(fleet, client):
    s = sid("cli")
    first = client.submit("[[stall:5]] to be interrupted", s)
    next(iter(client.stream(first.job_id)))
    out = cli(fleet, "submit", "instead", "--session", s, "--on-busy", "interrupt")
    assert out.returncode == 0, out.stderr
    assert client.wait(first.job_id, 10).status == "cancelled"
    assert client.wait(json.loads(out.stdout)["job_id"], 30).status == "succeeded"
