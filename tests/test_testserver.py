"""The OpenAI-compatible test server, driven by the real ``openai`` SDK."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from chatq.testing.server import TestServer, complete, echo_reply
from chatq.worker.offline_model import history_hash


@pytest.fixture(scope="module")
def server() -> Iterator[TestServer]:
    with TestServer() as s:
        yield s


@pytest.fixture
def sdk(server: TestServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=5)


def tag(text: str) -> str:
    """A message text unique to this test run, so fault counters never collide."""
    return f"{text} {uuid.uuid4().hex[:8]}"


def chat(sdk: openai.OpenAI, text: str, **kw):
    return sdk.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": text}], **kw)


def test_plain_reply_and_endpoints(server, sdk):
    text = tag("hello")
    r = chat(sdk, text)
    assert r.choices[0].message.content == echo_reply([{"role": "user", "content": text}])
    assert r.model == "chatq-offline:gpt-test"
    assert [m.id for m in sdk.models.list()] == ["chatq-offline-echo"]
    root = server.base_url.removesuffix("/v1")
    assert httpx.get(f"{root}/healthz").json() == {"ok": True}
    assert httpx.get(f"{root}/stats").json()["requests"] >= 1
    assert set(server.stats) == {"requests", "in_flight", "max_in_flight", "faults"}


def test_echoes_leave_out_the_server_directives(server, sdk):
    msgs = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "r"},
            {"role": "user", "content": "two [[fault:429 n=2]] [[stall:1]] [[drop]]"}]
    assert echo_reply(msgs) == f"echo #2: two | h={history_hash(msgs[:2])}"
    assert complete({"messages": msgs})["choices"][0]["message"]["content"] == echo_reply(msgs)
    text = tag("three [[stall:0.01]]")
    assert chat(sdk, text).choices[0].message.content == echo_reply([{"role": "user", "content": text}])
    assert "[[stall" not in echo_reply([{"role": "user", "content": text}])


def test_tool_round_trip_and_recorded_requests(server, sdk):
    text = tag('[[tool:lookup {"q": 1}]]')
    messages: list[dict] = [{"role": "user", "content": text}]
    call = chat(sdk, text).choices[0].message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("lookup", '{"q": 1}')
    messages += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                 {"role": "tool", "tool_call_id": call.id, "content": "42"}]
    r = sdk.chat.completions.create(model="gpt-test", messages=messages)
    assert r.choices[0].message.content == "Tool results: lookup=42"
    seen = httpx.get(server.base_url.removesuffix("/v1") + "/requests", params={"contains": text}).json()
    assert len(seen) == 2 and seen == server.recorded(text)
    assert seen[1]["messages"][-1] == {"role": "tool", "tool_call_id": call.id, "content": "42"}


@pytest.mark.parametrize("messages", [
    [{"role": "assistant", "content": None,
      "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
     {"role": "tool", "tool_call_id": "call_b", "content": "x"}],
    [{"role": "assistant", "content": None,
      "tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
     {"role": "user", "content": "next"}],
    [{"role": "tool", "tool_call_id": "call_a", "content": "x"}],
], ids=["wrong-id", "missing-result", "orphan-tool"])
def test_unpaired_tool_messages_are_rejected(sdk, messages):
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "q"}, *messages])
    assert "tool" in err.value.message


def test_empty_messages_rejected(sdk):
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="gpt-test", messages=[])


def test_429_with_retry_after_then_recovers(server, sdk):
    text = tag("busy [[fault:429 n=2 retry_after=1]]")
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as err:
            chat(sdk, text)
        assert err.value.response.headers["retry-after"] == "1"
        assert err.value.code == "rate_limit_exceeded"
    assert chat(sdk, text).choices[0].message.content.startswith("echo #1: busy ")


def test_quota_is_permanent(sdk):
    text = tag("[[fault:quota]]")
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as err:
            chat(sdk, text)
        assert err.value.code == "insufficient_quota" and err.value.type == "insufficient_quota"


def test_500_once_and_400_always(sdk):
    flaky = tag("[[fault:500]]")
    with pytest.raises(openai.InternalServerError):
        chat(sdk, flaky)
    assert chat(sdk, flaky).choices
    bad = tag("[[fault:400]]")
    for _ in range(2):
        with pytest.raises(openai.BadRequestError, match="Invalid request"):
            chat(sdk, bad)
    with pytest.raises(openai.AuthenticationError):
        chat(sdk, tag("[[fault:401]]"))


def test_faults_compose_in_order(sdk):
    text = tag("[[fault:503]] [[drop]]")
    with pytest.raises(openai.InternalServerError):
        chat(sdk, text)
    with pytest.raises(openai.APIConnectionError):
        chat(sdk, text)
    assert chat(sdk, text).choices


def test_drop_raises_connection_error(server, sdk):
    text = tag("[[drop n=1]]")
    faults = server.stats["faults"]
    with pytest.raises(openai.APIConnectionError) as err:
        chat(sdk, text)
    assert not isinstance(err.value, openai.APITimeoutError)
    assert server.stats["faults"] == faults + 1
    assert chat(sdk, text).choices


def test_stall_trips_client_timeout(sdk):
    text = tag("[[stall:1]]")
    with pytest.raises(openai.APITimeoutError):
        chat(sdk, text, timeout=0.2)
    assert chat(sdk, text, timeout=2).choices


def test_latency_with_hundreds_in_flight():
    with TestServer(latency=1.0) as server:
        sdk = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=30)
        texts = [tag(f"n{i}") for i in range(200)]
        with ThreadPoolExecutor(200) as pool:
            replies = list(pool.map(lambda t: chat(sdk, t).choices[0].message.content, texts))
        assert [r.split(" | ")[0] for r in replies] == [f"echo #1: {t}" for t in texts]
        assert server.stats["requests"] == 200 and server.stats["in_flight"] == 0
        assert server.stats["max_in_flight"] >= 100
        root = server.base_url.removesuffix("/v1")
        assert httpx.post(f"{root}/control", json={"latency": 0, "reset": True}).json()["requests"] == 0
        assert server.latency == 0 and chat(sdk, "quick").choices


def _post(server: TestServer, text: str) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat/completions", timeout=30,
                      json={"model": "m", "messages": [{"role": "user", "content": text}]})


@pytest.mark.parametrize("directive,content_type,fragment", [
    ("[[fault:html]]", "text/html", b"<title>502 Bad Gateway</title>"),
    ("[[fault:text]]", "application/json", b"upstream connect error"),
    ("[[fault:notchat]]", "application/json", b'"object":"list"'),
    ("[[fault:nochoices]]", "application/json", b'"choices":[]'),
])
def test_bad_200_replies_always_unless_n(server, directive, content_type, fragment):
    text = tag(directive)
    for _ in range(2):
        r = _post(server, text)
        assert r.status_code == 200 and r.headers["content-type"].startswith(content_type)
        assert fragment in r.content
    once = tag(directive.replace("]]", " n=1]]"))
    assert fragment in _post(server, once).content
    assert _post(server, once).json()["choices"][0]["message"]["content"].startswith("echo #1")


def test_huge_reply_is_a_chunked_valid_completion(server):
    r = _post(server, tag("[[fault:huge bytes=300000]]"))
    assert r.status_code == 200 and "content-length" not in r.headers
    assert r.headers["transfer-encoding"] == "chunked" and len(r.content) > 300_000
    assert r.json()["choices"][0]["message"]["content"] == "x" * 300_000


def test_drip_feeds_a_valid_completion(server):
    text = tag("[[fault:drip bps=100]]")
    started = time.monotonic()
    with httpx.stream("POST", f"{server.base_url}/chat/completions", timeout=30,
                      json={"model": "m", "messages": [{"role": "user", "content": text}]}) as r:
        chunks = list(r.iter_bytes())
    body = b"".join(chunks)
    assert int(r.headers["content-length"]) == len(body) and len(chunks) > 10
    assert time.monotonic() - started >= (len(body) - 10) / 100  # the server kept to its rate
    assert json.loads(body)["choices"][0]["message"]["content"].startswith("echo #1")
