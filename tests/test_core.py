"""The core guarantees, end to end: real Redis, two real worker processes, the real openai SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid

import pytest

from chatq.tasks.errors import InvalidRequest, JobNotFound, NotCancellable, SessionBusy, WaitTimeout
from chatq.testing.server import complete

from .conftest import ROOT, wait_all


def sid(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def expected_history(texts: list[str]) -> list[tuple[str, str]]:
    """The (role, content) pairs a session must hold after these messages, in order, once each."""
    msgs: list[dict] = []
    for text in texts:
        msgs.append({"role": "user", "content": text})
        msgs.append({"role": "assistant",
                     "content": complete({"messages": msgs})["choices"][0]["message"]["content"]})
    return [(m["role"], m["content"]) for m in msgs]


def history_pairs(client, session_id: str) -> list[tuple[str, str]]:
    session = client.get_session(session_id)
    assert session is not None
    return [(m.role, m.content) for m in session.messages]


# The three scenarios of the original session fix.
def test_new_session_id_is_created_and_listed(client):
    s = sid("user")
    job = client.chat("My name is Alice", s, timeout=30)
    assert job.status == "succeeded", job.error
    assert s in client.list_sessions()


def test_continuation_remembers_and_other_session_does_not(client):
    s, other = sid(), sid()
    assert client.chat("My name is Alice", s, timeout=30).status == "succeeded"
    second = client.chat("What's my name?", s, timeout=30)
    assert "Alice" in second.result.content
    third = client.chat("What's my name?", other, timeout=30)
    assert third.status == "succeeded"
    assert "Alice" not in third.result.content
    assert [m.role for m in client.get_session(s).messages] == ["user", "assistant"] * 2


def test_no_session_id_gets_a_fresh_one(client):
    a = client.submit("hello")
    b = client.submit("hello")
    assert a.session_id != b.session_id
    done = wait_all(client, [a.job_id, b.job_id])
    assert all(j.status == "succeeded" for j in done)
    assert {a.session_id, b.session_id} <= set(client.list_sessions())


def test_job_record_has_result_usage_and_timestamps(client):
    job = client.chat("How are you?", sid(), timeout=30)
    assert job.status == "succeeded" and job.attempts == 1
    assert job.started_at and job.finished_at and job.created_at <= job.started_at <= job.finished_at
    r = job.result
    assert r.message.role == "assistant" and r.content == r.message.content
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0
    assert r.usage.model.startswith("chatq-offline")
    session = client.get_session(job.session_id)
    assert session.usage.total_tokens == r.usage.total_tokens
    assert session.messages[0].metadata["job_id"] == job.job_id


def test_strict_order_50_messages_to_4_sessions_submitted_at_once(client):
    sessions = [sid("order") for _ in range(4)]
    texts = {s: [f"{s} message {i}" for i in range(50)] for s in sessions}
    jobs: dict[str, list[str]] = {s: [] for s in sessions}

    def producer(s: str) -> None:
        for t in texts[s]:
            jobs[s].append(client.submit(t, s).job_id)

    threads = [threading.Thread(target=producer, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = wait_all(client, [j for s in sessions for j in jobs[s]], timeout=120)
    assert all(j.status == "succeeded" for j in done), [j.error for j in done if j.status != "succeeded"]
    for s in sessions:
        assert history_pairs(client, s) == expected_history(texts[s])
        finished = [client.get(j) for j in jobs[s]]
        starts = [j.started_at for j in finished]
        ends = [j.finished_at for j in finished]
        assert all(ends[i] <= starts[i + 1] for i in range(len(finished) - 1)), "turns overlapped"


def test_sessions_run_in_parallel(client, fake_openai):
    # Each first request of these messages stalls 1.5 s; serial processing would take 6 s.
    sessions = [sid("par") for _ in range(4)]
    jobs = [client.submit(f"slow [[stall:1.5]] {s}", s) for s in sessions]
    done = wait_all(client, [j.job_id for j in jobs], timeout=60)
    assert all(j.status == "succeeded" for j in done)
    latest_start = max(j.started_at for j in done)
    earliest_end = min(j.finished_at for j in done)
    assert latest_start < earliest_end, "sessions did not overlap"


def test_get_or_create_races_make_one_session(client):
    s = sid("race")
    results: list[bool] = []
    barrier = threading.Barrier(16)

    def create() -> None:
        barrier.wait()
        results.append(client.sessions.create(s))

    threads = [threading.Thread(target=create) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1
    assert client.list_sessions().count(s) == 1


def test_first_messages_racing_on_one_new_id_make_one_session(client):
    s = sid("race2")
    jobs = [client.submit(f"first {i}", s) for i in range(8)]
    done = wait_all(client, [j.job_id for j in jobs])
    assert all(j.status == "succeeded" for j in done)
    assert client.list_sessions().count(s) == 1
    assert len(client.get_session(s).messages) == 16


def test_idempotency_key_returns_same_job_and_runs_once(client):
    s = sid()
    key = f"key-{uuid.uuid4().hex}"
    a = client.submit("only once please", s, idempotency_key=key)
    b = client.submit("only once please", s, idempotency_key=key)
    assert a.job_id == b.job_id
    client.wait(a.job_id, 30)
    c = client.submit("only once please", s, idempotency_key=key)
    assert c.job_id == a.job_id and c.status == "succeeded"
    assert len(client.get_session(s).messages) == 2


def test_on_busy_reject_refuses_and_enqueue_queues(client):
    s = sid()
    first = client.submit("busy [[stall:1.5]] now", s)
    with pytest.raises(SessionBusy):
        client.submit("second", s, on_busy="reject")
    queued = client.submit("third", s)
    done = wait_all(client, [first.job_id, queued.job_id])
    assert [j.status for j in done] == ["succeeded", "succeeded"]
    assert [c for _, c in history_pairs(client, s)][0::2] == ["busy [[stall:1.5]] now", "third"]


def test_cancel_queued_job_removes_it_without_blocking_the_rest(client):
    s = sid()
    first = client.submit("hold [[stall:1.5]] on", s)
    second = client.submit("cancel me", s)
    third = client.submit("keep me", s)
    cancelled = client.cancel(second.job_id)
    assert cancelled.status == "cancelled" and cancelled.finished_at
    done = wait_all(client, [first.job_id, third.job_id])
    assert [j.status for j in done] == ["succeeded", "succeeded"]
    assert client.wait(second.job_id, 1).status == "cancelled"
    assert [c for _, c in history_pairs(client, s)][0::2] == ["hold [[stall:1.5]] on", "keep me"]
    with pytest.raises(NotCancellable):
        client.cancel(third.job_id)


def test_unknown_job_is_unknown(client):
    assert client.get("nope" * 8) is None
    with pytest.raises(JobNotFound):
        client.wait("nope" * 8, 1)
    with pytest.raises(JobNotFound):
        client.cancel("nope" * 8)


def test_wait_times_out_on_unfinished_job(client):
    job = client.submit("[[stall:2]] slow one", sid())
    with pytest.raises(WaitTimeout):
        client.wait(job.job_id, 0.3)
    assert client.wait(job.job_id, 30).status == "succeeded"


def test_finished_jobs_expire_after_ttl(client):
    job = client.chat("short lived", sid(), timeout=30)
    ttl = client.r.ttl(client.keys.job(job.job_id))
    assert 0 < ttl <= client.settings.result_ttl


@pytest.mark.parametrize("kwargs,fragment", [
    ({"message": ""}, "empty"),
    ({"message": "   "}, "empty"),
    ({"message": "x" * 40_000}, "limit"),
    ({"message": "hi", "session_id": "bad id!"}, "malformed session ID"),
    ({"message": "hi", "session_id": "x" * 200}, "malformed session ID"),
    ({"message": "hi", "session_id": "abc\n"}, "malformed session ID"),
    ({"message": "hi", "agent": "nobody"}, "unknown agent"),
    ({"message": "hi", "metadata": ["not", "a", "dict"]}, "metadata"),
    ({"message": "hi", "metadata": {"x": object()}}, "JSON"),
    ({"message": "hi", "idempotency_key": "has space"}, "idempotency key"),
])
def test_bad_input_is_refused_before_anything_is_written(client, kwargs, fragment):
    kwargs = {"session_id": sid("bad"), **kwargs}
    jobs_before = set(client.r.scan_iter(client.keys.job_pattern))
    with pytest.raises(InvalidRequest, match=fragment):
        client.submit(**kwargs)
    assert set(client.r.scan_iter(client.keys.job_pattern)) <= jobs_before
    assert not list(client.r.scan_iter(f"*{kwargs['session_id'][-10:]}*"))


def test_provider_error_fails_job_and_keeps_history(client):
    s = sid()
    assert client.chat("My name is Bob", s, timeout=30).status == "succeeded"
    failed = client.chat("[[fault:400]] this breaks", s, timeout=30)
    assert failed.status == "failed"
    assert failed.error.type == "ProviderHTTP400" and "Invalid request" in failed.error.message
    assert not failed.error.retryable
    after = client.chat("What's my name?", s, timeout=30)
    assert after.result.content == "Your name is Bob."
    assert [c for _, c in history_pairs(client, s)][0::2] == ["My name is Bob", "What's my name?"]


def test_delete_session(client):
    s = sid()
    client.chat("remember me", s, timeout=30)
    assert client.delete_session(s) is True
    assert client.get_session(s) is None and s not in client.list_sessions()
    assert client.delete_session(s) is False
    again = client.chat("What's my name?", s, timeout=30)
    assert again.status == "succeeded" and len(client.get_session(s).messages) == 2


def test_create_session_explicitly(client):
    created = client.create_session()
    assert created.session_id in client.list_sessions() and created.messages == []
    named = client.create_session("my_session")
    assert named.session_id == "my_session"


def run_cli(fleet, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatq", *args], cwd=ROOT, env=fleet.env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_submit_get_wait_chat_sessions(fleet):
    s = sid("cli")
    out = run_cli(fleet, "submit", "My name is Carol", "--session", s, "--metadata", '{"user": 7}')
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["status"] == "queued" and job["session_id"] == s
    waited = json.loads(run_cli(fleet, "wait", job["job_id"], "--timeout", "30").stdout)
    assert waited["status"] == "succeeded" and waited["result"]["usage"]["total_tokens"] > 0
    assert json.loads(run_cli(fleet, "get", job["job_id"]).stdout)["job_id"] == job["job_id"]
    chat = run_cli(fleet, "chat", "What's my name?", "--session", s)
    assert chat.returncode == 0 and chat.stdout.strip() == "Your name is Carol."
    assert s in json.loads(run_cli(fleet, "sessions", "list").stdout)
    shown = json.loads(run_cli(fleet, "sessions", "show", s).stdout)
    assert shown["messages"][0]["metadata"]["user"] == 7 and len(shown["messages"]) == 4
    assert json.loads(run_cli(fleet, "sessions", "delete", s).stdout) == {"deleted": s}


def test_cli_errors_are_one_clear_line(fleet):
    unknown = run_cli(fleet, "get", "0" * 32)
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: unknown or expired job")
    bad = run_cli(fleet, "submit", "", "--session", "x")
    assert bad.returncode == 2 and "message is empty" in bad.stderr and "Traceback" not in bad.stderr
    timeout = run_cli(fleet, "wait", json.loads(run_cli(fleet, "submit", "[[stall:8]] zz").stdout)["job_id"],
                      "--timeout", "0.2")
    assert timeout.returncode == 1 and "still" in timeout.stderr


def _rabbitmq_up() -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _rabbitmq_up(), reason="no RabbitMQ at 127.0.0.1:5672")
def test_rabbitmq_as_broker(make_fleet):
    fleet = make_fleet(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    fleet.settings = fleet.settings.model_copy(update={"broker_url": fleet.env["CHATQ_BROKER_URL"]})
    fleet.start_worker(8)
    client = fleet.client()
    s = sid("amqp")
    texts = ["My name is Erin", "What's my name?", "bye"]
    jobs = [client.submit(t, s).job_id for t in texts]
    done = wait_all(client, jobs, timeout=60)
    assert [j.status for j in done] == ["succeeded"] * 3, fleet.logs()
    assert history_pairs(client, s) == expected_history(texts)


def test_bare_worker_holds_many_llm_calls_in_flight(make_fleet, fake_openai):
    fleet = make_fleet()
    fleet.start_worker(None)
    client = fleet.client()
    assert client.chat("warm up", timeout=60).status == "succeeded"
    tag = uuid.uuid4().hex[:6]
    fake_openai.reset_stats()
    jobs = [client.submit(f"wait [[stall:3]] {tag} {i}", f"io-{tag}-{i}").job_id for i in range(150)]
    done = wait_all(client, jobs, timeout=90)
    assert all(j.status == "succeeded" for j in done), fleet.logs()
    assert fake_openai.stats["max_in_flight"] >= 100
