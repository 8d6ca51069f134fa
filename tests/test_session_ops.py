"""Session operations through real workers and the real SDK: a session seeded with a system prompt
and an earlier conversation, regenerate and fork, each queued behind the session's earlier jobs."""

from __future__ import annotations

import json
import uuid

import pytest

from chatq.tasks.errors import InvalidRequest, SessionExists

from .test_api import a, assert_error, base_url, finished  # noqa: F401  (fixtures)
from .test_core import run_cli

SLOW = "[[stall:1.5]]"


def sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


EARLIER = [
    {"role": "developer", "content": "Answer in one line."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    {"role": "assistant", "content": "It is 5."},
]


def roles_and_text(messages) -> list[tuple[str, str | None]]:
    return [(m.role, m.content.split(" [[")[0] if m.role == "user" else None) for m in messages]


def test_a_seeded_sessions_first_turn_sees_its_system_prompt_and_history(fleet, client, fake_openai):
    s = sid("seed")
    session = client.create_session(s, system_prompt="You are Ziggy.", messages=EARLIER)
    assert session.system_prompt == "You are Ziggy." and len(session.messages) == 5
    marker = f"and now? {uuid.uuid4().hex[:6]}"
    assert client.chat(marker, session_id=s, timeout=30).status == "succeeded"
    sent = fake_openai.recorded(marker)[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "You are Ziggy."}, "the session's prompt, not the agent's"
    assert [m["role"] for m in sent[1:]] == ["developer", "user", "assistant", "tool", "assistant", "user"]
    assert sent[3]["tool_calls"][0]["id"] == "call_1" and sent[4]["content"] == "5"
    with pytest.raises(SessionExists):
        client.create_session(s, messages=EARLIER)
    assert len(client.get_session(s).messages) == 7, "a refused seed changes nothing"


@pytest.mark.parametrize("messages, problem", [
    (EARLIER[:3], "tool_call_ids did not have response messages"),
    ([{"role": "wizard", "content": "hi"}], "not a chat message"),
    ([{"role": "tool", "tool_call_id": "x", "content": "5"}], "must be a response to a preceding"),
    ("hello", "must be a list"),
])
def test_a_seed_that_is_not_a_conversation_is_refused_and_writes_nothing(client, messages, problem):
    s = sid("bad-seed")
    with pytest.raises(InvalidRequest, match=problem):
        client.create_session(s, messages=messages)
    assert client.get_session(s) is None


def test_regenerate_replaces_the_last_reply_after_the_work_queued_before_it(fleet, client):
    s = sid("regen")
    client.chat("first question", session_id=s, timeout=30)
    slow = client.submit(f"second question {SLOW}", s)
    regen = client.regenerate(s)
    assert client.wait(regen.job_id, 30).status == "succeeded"
    assert client.get(slow.job_id).status == "succeeded", "the regenerate waited for the job before it"
    history = client.get_session(s).messages
    assert roles_and_text(history) == [("user", "first question"), ("assistant", None),
                                       ("user", "second question"), ("assistant", None)]
    assert history[3].metadata["regenerated"] is True and history[3].metadata["job_id"] == regen.job_id
    assert history[2].metadata["job_id"] == slow.job_id, "the user's message is the one it answered"
    assert client.get(regen.job_id).result.content == history[3].content


def test_regenerate_of_a_session_without_a_user_message_fails_clearly(fleet, client):
    s = sid("regen-empty")
    client.create_session(s)
    job = client.wait(client.regenerate(s).job_id, 30)
    assert job.status == "failed" and job.error.type == "NothingToRegenerate"


def test_fork_copies_up_to_message_n_behind_queued_work_then_regenerate_answers_the_edit(fleet, client):
    s = sid("fork")
    client.create_session(s, system_prompt="You are Ziggy.")
    client.chat("one", session_id=s, timeout=30)
    client.submit(f"two {SLOW}", s)
    fork = client.fork(s, at=2, into=f"{s}-b", replace="two, edited")
    done = client.wait(fork.job_id, 30)
    assert done.status == "succeeded" and done.result.content == f"{s}-b"
    assert len(client.get_session(s).messages) == 4, "the fork ran after the queued turn, and left it alone"
    forked = client.get_session(f"{s}-b")
    assert forked.system_prompt == "You are Ziggy."
    assert roles_and_text(forked.messages) == [("user", "one"), ("assistant", None), ("user", "two, edited")]
    assert client.wait(client.regenerate(f"{s}-b").job_id, 30).status == "succeeded"
    assert roles_and_text(client.get_session(f"{s}-b").messages)[-2:] == [("user", "two, edited"),
                                                                          ("assistant", None)]
    again = client.wait(client.fork(s, at=2, into=f"{s}-b").job_id, 30)
    assert again.status == "failed" and again.error.type == "SessionExists"
    beyond = client.wait(client.fork(s, at=40).job_id, 30)
    assert beyond.status == "failed" and beyond.error.type == "ForkOutOfRange"


def test_session_operations_over_http(a, fleet):  # noqa: F811
    s = sid("http-ops")
    r = a.post("/v1/sessions", json={"session_id": s, "system_prompt": "Be brief.", "messages": EARLIER})
    assert r.status_code == 201, r.text
    assert r.json()["system_prompt"] == "Be brief." and len(r.json()["messages"]) == 5
    assert_error(a.post("/v1/sessions", json={"session_id": s, "messages": EARLIER}), 409, "session_exists")
    assert_error(a.post("/v1/sessions", json={"messages": EARLIER[:3]}), 422)
    r = a.post(f"/v1/sessions/{s}/regenerate", json={})
    assert r.status_code == 202 and r.headers["Location"].endswith(r.json()["job_id"])
    assert finished(a, r.json()["job_id"])["status"] == "succeeded"
    r = a.post(f"/v1/sessions/{s}/fork", json={"at": 3, "replace": "What is 3 + 4?"})
    assert r.status_code == 202, r.text
    new = finished(a, r.json()["job_id"])["result"]["content"]
    assert [m["role"] for m in a.get(f"/v1/sessions/{new}").json()["messages"]] == ["developer", "user",
                                                                                  "assistant", "user"]


def test_session_operations_from_the_cli(fleet, tmp_path):
    s = sid("cli-ops")
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps(EARLIER))
    out = run_cli(fleet, "sessions", "create", s, "--system", "Be brief.", "--messages", str(earlier))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["system_prompt"] == "Be brief."
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    refused = run_cli(fleet, "sessions", "create", sid("cli-bad"), "--messages", str(bad))
    assert refused.returncode == 2 and refused.stderr.startswith("error: ")
    job = json.loads(run_cli(fleet, "sessions", "fork", s, "--at", "3", "--replace", "edited").stdout)
    done = json.loads(run_cli(fleet, "wait", job["job_id"], "--timeout", "30").stdout)
    assert done["status"] == "failed" and done["error"]["type"] == "InvalidFork", \
        "three messages end inside a tool call: the fork is refused"
    job = json.loads(run_cli(fleet, "sessions", "regenerate", s).stdout)
    assert json.loads(run_cli(fleet, "wait", job["job_id"], "--timeout", "30").stdout)["status"] == "succeeded"
