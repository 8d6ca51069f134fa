"""The agent runtime through a real worker: tools, usage, history window, named agents, faults."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from chatq.tasks.errors import InvalidRequest
from chatq.testing.server import complete
from chatq.worker.tokens import estimate_tokens

from .conftest import ROOT, Fleet, wait_all

AGENTS = """
[agents.default]
model = "gpt-4o-mini"
tools = ["chatq.worker.builtin_tools:add", "tests.tools_for_tests:explode", "tests.tools_for_tests:weather_lookup"]

[agents.pirate]
model = "gpt-4o-mini"
system_prompt = "[[persona:Arr]] You are a pirate."
temperature = 0.2
max_output_tokens = 64
max_tool_iterations = 2
tools = ["chatq.worker.builtin_tools:add"]

[agents.forgetful]
model = "gpt-4o-mini"
history_tokens = 120
tools = ["chatq.worker.builtin_tools:add"]
"""


@pytest.fixture(scope="module")
def agent_fleet(tmp_path_factory, fake_openai):
    tmp = tmp_path_factory.mktemp("agents")
    (tmp / "agents.toml").write_text(AGENTS)
    fleet = Fleet(tmp, fake_openai.base_url, agents_file=str(tmp / "agents.toml"),
                  provider_timeout="1", provider_backoff_max="3")
    fleet.start_worker(20)
    yield fleet
    fleet.stop()


@pytest.fixture
def ac(agent_fleet):
    return agent_fleet.client()


def sid() -> str:
    return f"a-{uuid.uuid4().hex[:10]}"


def test_tool_round_trip_keeps_everything_in_history(ac, fake_openai):
    s = sid()
    job = ac.chat('Add please [[tool:add {"a": 2, "b": 3}]]', s, timeout=30)
    assert job.status == "succeeded", job.error
    assert job.result.content == "Tool results: add=5.0" and job.result.tool_calls == 1
    msgs = ac.get_session(s).messages
    assert [m.role for m in msgs] == ["user", "assistant", "tool", "assistant"]
    call = msgs[1].tool_calls[0]
    assert call.function.name == "add" and msgs[2].tool_call_id == call.id
    assert msgs[2].metadata["tool"] == "add" and msgs[2].metadata["ok"] is True
    assert msgs[1].metadata["finish_reason"] == "tool_calls" and msgs[3].metadata["model"]
    assert all(m.metadata["job_id"] == job.job_id for m in msgs)
    # The next turn replays the stored history; the test server rejects a mismatched tool_call_id.
    follow = ac.chat("and now?", s, timeout=30)
    assert follow.status == "succeeded", follow.error
    sent = fake_openai.recorded("and now?")[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "assistant", "user"]
    assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"] == call.id
    assert "metadata" not in sent[0]


def test_user_message_sent_once_and_usage_summed_over_calls(ac, fake_openai):
    s = sid()
    text = f'once {s} [[tool:add {{"a": 1, "b": 1}}]]'
    job = ac.chat(text, s, timeout=30)
    calls = fake_openai.recorded(s)
    assert len(calls) == 2
    for body in calls:
        assert [m["content"] for m in body["messages"] if m["role"] == "user"] == [text]
    expected = [complete(b)["usage"] for b in calls]
    u = job.result.usage
    assert u.prompt_tokens == sum(e["prompt_tokens"] for e in expected)
    assert u.completion_tokens == sum(e["completion_tokens"] for e in expected)
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    second = ac.chat("more", s, timeout=30)
    assert ac.get_session(s).usage.total_tokens == u.total_tokens + second.result.usage.total_tokens


@pytest.mark.parametrize("directive,fragment", [
    ('[[tool:nope {}]]', "unknown tool 'nope'"),
    ('[[tool:add {"a": 1,}]]', "not valid JSON"),
    ('[[tool:add {"a": "x", "b": 2}]]', "invalid arguments"),
    ('[[tool:explode {"reason": "kaput"}]]', "RuntimeError: kaput"),
])
def test_tool_failures_become_tool_messages(ac, directive, fragment):
    job = ac.chat(f"try {directive}", sid(), timeout=30)
    assert job.status == "succeeded", job.error
    tool_msg = ac.get_session(job.session_id).messages[2]
    assert tool_msg.role == "tool" and fragment in tool_msg.content and tool_msg.metadata["ok"] is False


def test_pydantic_model_tool_with_registered_name(ac):
    job = ac.chat('[[tool:weather {"city": "Oslo", "days": 2}]]', sid(), timeout=30)
    assert job.result.content == 'Tool results: weather={"city":"Oslo","days":2,"sky":"clear"}'


def test_named_agent_system_prompt_and_max_tool_iterations(ac, fake_openai):
    s = sid()
    job = ac.chat(f"ahoy {s}", s, agent="pirate", timeout=30)
    assert job.agent == "pirate" and job.result.content.startswith("Arr: echo #1")
    body = fake_openai.recorded(s)[-1]
    assert body["messages"][0]["role"] == "system" and body["temperature"] == 0.2 and body["max_tokens"] == 64
    looped = ac.chat('[[tool-loop:add {"a": 1, "b": 1}]]', s, agent="pirate", timeout=30)
    assert looped.status == "failed" and looped.error.type == "MaxToolIterations"
    assert "2 rounds" in looped.error.message
    assert len(ac.get_session(s).messages) == 2


def test_unknown_agent_refused_at_submission(ac):
    with pytest.raises(InvalidRequest, match="unknown agent 'ghost'"):
        ac.submit("hi", agent="ghost")


def test_history_window_sends_newest_turns_and_keeps_tool_pairs(ac, fake_openai):
    s = sid()
    ac.chat('[[tool:add {"a": 4, "b": 4}]] early tool turn', s, agent="forgetful", timeout=30)
    for i in range(6):
        assert ac.chat(f"filler {s} {i} " + "words " * 10, s, agent="forgetful", timeout=30).status == "succeeded"
    last = fake_openai.recorded(f"filler {s} 5")[-1]["messages"]
    assert len(last) < 14 and last[-1]["content"].startswith(f"filler {s} 5")
    assert last[0]["role"] == "user"
    assert sum(estimate_tokens(m) for m in last) <= 120
    assert len(ac.get_session(s).messages) == 16  # the store keeps everything


def test_429_with_retry_after_is_waited_out_in_place(ac):
    s = sid()
    first = ac.submit(f"[[fault:429 n=2 retry_after=1]] first {s}", s)
    second = ac.submit(f"second {s}", s)
    a, b = wait_all(ac, [first.job_id, second.job_id])
    assert a.status == "succeeded" and a.provider_retries == 2
    assert a.last_error.type == "ProviderHTTP429" and a.last_error.retryable
    assert (a.finished_at - a.started_at).total_seconds() >= 2.0
    assert b.started_at >= a.finished_at
    assert [m.content for m in ac.get_session(s).messages][0::2] == [first.message, second.message]


@pytest.mark.parametrize("directive,error_type", [
    ("[[fault:500 n=1]]", "ProviderHTTP500"),
    ("[[fault:503 n=2]]", "ProviderHTTP503"),
    ("[[drop n=1]]", "ProviderConnectionError"),
    ("[[stall:3 n=1]]", "ProviderTimeout"),
])
def test_transient_faults_are_retried(ac, directive, error_type):
    job = ac.chat(f"{directive} {sid()}", timeout=60)
    assert job.status == "succeeded", job.error
    assert job.provider_retries >= 1 and job.last_error.type == error_type


@pytest.mark.parametrize("directive,error_type,fragment", [
    ("[[fault:quota]]", "InsufficientQuota", "exceeded your current quota"),
    ("[[fault:401]]", "ProviderHTTP401", "401"),
    ("[[fault:404]]", "ProviderHTTP404", "404"),
])
def test_permanent_faults_fail_at_once_with_provider_message(ac, directive, error_type, fragment):
    job = ac.chat(f"{directive} {sid()}", timeout=30)
    assert job.status == "failed" and job.error.type == error_type and fragment in job.error.message
    assert job.provider_retries == 0 and not job.error.retryable


def test_worker_refuses_to_start_when_a_tool_does_not_import(agent_fleet, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[agents.default]\ntools = ["no_such_module:fn"]\n')
    env = {**agent_fleet.env, "CHATQ_AGENTS_FILE": str(bad)}
    out = subprocess.run([sys.executable, "-m", "chatq", "worker"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "no_such_module:fn" in out.stderr and "does not import" in out.stderr
