"""The OpenAI-compatible test server, driven by the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion

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


# Streaming: the SDK's own assembler must rebuild exactly what the plain reply says.

def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def assemble(chunks, tools=()) -> ChatCompletion:
    state = ChatCompletionStreamState(input_tools=list(tools))
    for c in chunks:
        state.handle_chunk(c)
    return state.get_final_completion()


def settled(server: TestServer, text: str, count: int = 1) -> dict:
    """The last of ``count`` streams recorded for ``text``, once it has ended (the server records it on its
    own thread, after the client may already have read ``[DONE]``)."""
    deadline = time.monotonic() + 5
    while not ((found := server.streams(text)) and len(found) >= count and found[-1]["ended"]) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(found) == count
    return found[-1]


def sse(server: TestServer, body: dict) -> tuple[httpx.Response, list[bytes]]:
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=10) as r:
        return r, r.read().split(b"\n\n")


def test_stream_is_openai_sse_and_assembles_to_the_plain_reply(server, sdk):
    text = tag("stream me [[stream words=40]]")
    plain = chat(sdk, text)
    assert len(plain.choices[0].message.content.split()) == 40 and "[[stream" not in plain.choices[0].message.content
    chunks = list(chat(sdk, text, stream=True, stream_options={"include_usage": True}))
    got = assemble(chunks)
    assert got.choices[0].message.content == plain.choices[0].message.content
    assert got.choices[0].finish_reason == "stop" and got.choices[0].message.tool_calls is None
    assert (got.id, got.model, got.usage) == (plain.id, plain.model, plain.usage)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].object == "chat.completion.chunk"
    assert len(chunks) == 1 + 40 + 2  # role, a word each (the echo's own words count), finish, usage

    r, events = sse(server, {"model": "m", "messages": user(text), "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert events[-2:] == [b"data: [DONE]", b""] and all(e.startswith(b"data: {") for e in events[:-2])
    assert "usage" not in json.loads(events[-3][6:])  # asked for no usage: none, not even null
    record = settled(server, text, count=2)
    assert (record["outcome"], record["chunks"]) == ("done", len(events) - 2)
    assert record["emissions"][-1][0] == len(plain.choices[0].message.content)


def test_usage_chunk_comes_last_and_only_when_asked(sdk):
    text = tag("usage")
    plain = chat(sdk, text)
    asked = list(chat(sdk, text, stream=True, stream_options={"include_usage": True}))
    assert asked[-1].choices == [] and asked[-1].usage == plain.usage
    assert all(c.usage is None for c in asked[:-1]) and asked[-2].choices[0].finish_reason == "stop"
    unasked = list(chat(sdk, text, stream=True))
    assert unasked[-1].choices[0].finish_reason == "stop" and all(c.usage is None for c in unasked)
    assert assemble(unasked).choices[0].message.content == plain.choices[0].message.content


def test_tool_calls_stream_as_openai_deltas(sdk):
    text = tag('[[tool:lookup {"q": "two words", "n": [1, 2]}]] [[tool:noargs]]')
    plain = chat(sdk, text).choices[0].message
    chunks = list(chat(sdk, text, stream=True))
    heads = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls
             and c.choices[0].delta.tool_calls[0].id]
    assert [(h.index, h.id, h.type, h.function.name, h.function.arguments) for h in heads] == [
        (i, call.id, "function", call.function.name, "") for i, call in enumerate(plain.tool_calls)]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.tool_calls == [heads[0]]
    assert len(chunks) > 8  # the arguments came in fragments
    tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
             for n in ("lookup", "noargs")]
    with sdk.chat.completions.stream(model="gpt-test", messages=user(text), tools=tools) as stream:
        for _ in stream:
            pass
        got = stream.get_final_completion().choices[0]
    assert got.finish_reason == "tool_calls" and got.message.content is None
    assert [(c.id, c.function.name, c.function.arguments) for c in got.message.tool_calls] == [
        (c.id, c.function.name, c.function.arguments) for c in plain.tool_calls]


def test_async_sdk_streams_the_same_reply(server):
    text = tag("async [[stream words=25]]")

    async def run() -> tuple[str | None, str | None]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=5)
        async with client:
            plain = await client.chat.completions.create(model="gpt-test", messages=user(text))
            async with client.chat.completions.stream(model="gpt-test", messages=user(text)) as stream:
                got = await stream.get_final_completion()
        return plain.choices[0].message.content, got.choices[0].message.content

    plain, streamed = asyncio.run(run())
    assert streamed == plain and len(plain.split()) == 25


def gaps(record: dict) -> list[float]:
    times = [t for _, t in record["emissions"]]
    return [b - a for a, b in zip(times, times[1:])]


def test_latency_before_the_first_chunk_and_delay_between_chunks():
    with TestServer(latency=0.3, chunk_delay=0.05) as server:
        sdk = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=5)
        text = tag("paced a b c")
        content = assemble(chat(sdk, text, stream=True)).choices[0].message.content
        record = settled(server, text)
        assert record["emissions"][0][1] - record["started"] >= 0.3 * 0.9
        assert min(gaps(record)) >= 0.05 * 0.9 and record["chunks"] == len(record["emissions"])
        chars = [n for n, _ in record["emissions"]]
        assert chars == sorted(chars) and chars[0] == 0 and chars[-1] == len(content)

        slow = tag("[[stream delay=0.2]] per message")  # the directive overrides the server's delay
        assert assemble(chat(sdk, slow, stream=True)).choices[0].message.content.startswith("echo #1: per message")
        assert min(gaps(settled(server, slow))) >= 0.2 * 0.9

        root = server.base_url.removesuffix("/v1")
        assert httpx.post(f"{root}/control", json={"chunk_delay": 0.1, "latency": 0}).json()["chunk_delay"] == 0.1
        assert server.chunk_delay == 0.1
        text = tag("controlled")
        list(chat(sdk, text, stream=True))
        assert min(gaps(settled(server, text))) >= 0.1 * 0.9
        assert httpx.get(f"{root}/streams", params={"contains": text}).json() == server.streams(text)


def test_nostream_answers_a_stream_request_with_plain_json(server, sdk):
    text = tag("[[nostream n=1]] plain please")
    stream = chat(sdk, text, stream=True)
    assert stream.response.headers["content-type"] == "application/json"
    reply = ChatCompletion.model_validate_json(stream.response.read())
    assert reply.choices[0].message.content == chat(sdk, text).choices[0].message.content
    assert server.streams(text) == []
    assert assemble(chat(sdk, text, stream=True)).choices[0].message.content == reply.choices[0].message.content

    root = server.base_url.removesuffix("/v1")
    assert httpx.post(f"{root}/control", json={"streaming": False}).json()["streaming"] is False
    try:
        text = tag("server cannot stream")
        r, _ = sse(server, {"model": "m", "messages": user(text), "stream": True})
        assert r.headers["content-type"] == "application/json" and server.streams(text) == []
    finally:
        server.streaming = True


def test_cut_drops_the_stream_mid_reply(server, sdk):
    text = tag("[[cut after=3]] one two three four five")
    seen: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for c in chat(sdk, text, stream=True):
            seen.append(c.choices[0].delta.content)
    assert seen == ["", "echo", " #1:", " one"]
    record = settled(server, text)
    assert (record["outcome"], record["chunks"]) == ("cut", 4)
    full = assemble(chat(sdk, text, stream=True)).choices[0].message.content  # n=1: once only
    assert full == chat(sdk, text).choices[0].message.content and full.startswith("echo #1: one two three four five")
    assert settled(server, text, count=2)["outcome"] == "done"


def test_a_stalled_call_whose_client_hangs_up_is_no_longer_in_flight(server):
    """A call its client gave up on (a cancelled turn) ends at the server too, so it does not count as
    in flight for the stall's remaining seconds."""
    before = server.stats["in_flight"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/chat/completions", timeout=0.5,
                   json={"model": "m", "messages": user(tag("[[stall:30]] hang up"))})
    deadline = time.monotonic() + 5
    while server.stats["in_flight"] > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.stats["in_flight"] == before


def test_client_closing_early_is_recorded_at_once(server, sdk):
    text = tag("[[stream delay=1]] hang up")
    stream = chat(sdk, text, stream=True)
    chunks = iter(stream)
    next(chunks), next(chunks)
    stream.close()
    record = settled(server, text)
    assert (record["outcome"], record["chunks"]) == ("closed", 2)
    assert record["ended"] < record["emissions"][-1][1] + 1  # noticed while sleeping, not at the next write

    async def run(text: str) -> None:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0, timeout=5) as client:
            stream = await client.chat.completions.create(model="m", messages=user(text), stream=True)
            async for _ in stream:
                break
            await stream.close()

    text = tag("[[stream delay=1]] async hang up")
    asyncio.run(run(text))
    record = settled(server, text)
    assert (record["outcome"], record["chunks"]) == ("closed", 1)
    assert record["ended"] < record["emissions"][-1][1] + 1
