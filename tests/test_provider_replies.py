"""Provider replies: one deadline per call, a size cap, and clear refusals of what is not a completion.

Pure checks (``reply``) tested directly; the rest through real worker processes and the
real SDK against the test server's bad-reply directives.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import pytest

from chatq.tasks.settings import Settings
from chatq.worker import offline_model
from chatq.worker.provider import Provider, ProviderError, classify
from chatq.worker.reply import (BadReply, ReplyBroken, ReplyTimeout, ReplyTooLarge, SSELines, StreamAssembly,
                                parse_completion, read_body)

from .conftest import Fleet

MAX_REPLY = 100_000


def completion(**changes) -> dict:
    body = offline_model.complete({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    body.update(changes)
    return body


def first_choice(**changes) -> dict:
    body = completion()
    body["choices"][0].update(changes)
    return body


def message(**changes) -> dict:
    body = completion()
    body["choices"][0]["message"].update(changes)
    return body


def raw(data) -> bytes:
    return json.dumps(data).encode()


# --- parse_completion: what is a chat completion --------------------------------------------------

def test_a_valid_completion_parses_to_the_sdk_type():
    parsed = parse_completion(raw(completion()), "application/json")
    assert parsed.choices[0].message.content == "echo #1: hi | h=" + offline_model.history_hash([])
    assert parsed.usage.total_tokens == parsed.usage.prompt_tokens + parsed.usage.completion_tokens


@pytest.mark.parametrize("body,content_type,fragments", [
    (b"<html><title>502 Bad Gateway</title></html>", "text/html; charset=utf-8",
     ["is not JSON (text/html, 43 bytes)", "<title>502 Bad Gateway"]),
    (b"upstream connect error", "application/json", ["is not JSON (application/json, 22 bytes)"]),
    (b"", "", ["is not JSON (no content type, 0 bytes)"]),
    (b"\xff\xfe\x00", "application/json", ["is not JSON"]),
    (b"[1, 2]", "application/json", ["JSON but not an object (list"]),
    (b'"ok"', "application/json", ["JSON but not an object (str"]),
    (raw({"object": "list", "data": []}), "application/json",
     ["not a chat completion: id: Field required", "choices: Field required", "model: Field required"]),
    (raw({"error": {"message": "The engine is overloaded"}}), "application/json",
     ["is an error: The engine is overloaded"]),
    (raw(completion(choices=[])), "application/json", ["has no choices"]),
    (raw(completion(choices="stop")), "application/json", ["choices: Input should be a valid array"]),
    (raw(completion(choices=["stop"])), "application/json", ["choices.0: Input should be"]),
    (raw(first_choice(message=None)), "application/json", ["choices.0.message: Input should be"]),
    (raw(message(content=42)), "application/json", ["choices.0.message.content: Input should be a valid string"]),
    (raw(message(tool_calls=[{"id": "c1", "type": "function", "function": {"name": "add"}}])),
     "application/json", ["choices.0.message.tool_calls.0", "arguments: Field required"]),
    (raw(completion(usage={"prompt_tokens": "many"})), "application/json",
     ["usage.prompt_tokens: Input should be a valid integer", "usage.total_tokens: Field required"]),
    (raw(completion(id=1, model=2, choices=[{"message": {"content": 3, "tool_calls": 4}}])), "application/json",
     ["id: Input should be a valid string; choices.0.message.content: ", "(and 1 more)"]),
    (raw(completion(model=None)), "application/json", ["model: Input should be a valid string"]),
])
def test_what_is_not_a_completion_is_named(body, content_type, fragments):
    with pytest.raises(BadReply) as exc:
        parse_completion(body, content_type)
    assert exc.value.type == "ProviderBadResponse" and exc.value.retryable
    for fragment in fragments:
        assert fragment in str(exc.value)


def test_a_long_non_json_reply_is_quoted_short():
    with pytest.raises(BadReply) as exc:
        parse_completion(b"<html>" + b"a" * 1_000_000, "text/html")
    assert "1000006 bytes" in str(exc.value) and len(str(exc.value)) < 200


def test_faults_in_fields_the_agent_never_reads_are_tolerated():
    """Compatible providers' deviations in fields chatq only records, as the SDK itself accepts them."""
    body = completion(created=1.5, system_fingerprint=7)
    del body["object"]
    body["choices"][0].update(finish_reason="eos", index="first")
    del body["choices"][0]["message"]["role"]
    body["choices"].append("not a choice")
    parsed = parse_completion(raw(body), "application/json")
    assert parsed.choices[0].finish_reason == "eos"
    assert parsed.choices[0].message.content.startswith("echo #1") and parsed.usage.total_tokens > 0
    calls = message(content=None, tool_calls=[
        {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}}])
    calls = parse_completion(raw({**calls, "object": "x"}))
    assert calls.choices[0].message.tool_calls[0].function.name == "add"


# --- read_body: one deadline, one size cap ----------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def chunks_every(clock: Clock, step: float, parts: list[bytes], then: Exception | None = None):
    for part in parts:
        clock.now += step
        yield part
    if then:
        clock.now += step
        raise then


def read(chunks, clock: Clock, declared=None, max_bytes=1000) -> bytes:
    async def arrive():  # the transport's async chunks, as the fake clock advances
        for chunk in chunks:
            yield chunk

    return asyncio.run(read_body(arrive(), declared=declared, deadline=10.0, timeout=10.0, max_bytes=max_bytes,
                                 clock=clock))


def test_body_read_whole_within_deadline_and_size():
    clock = Clock()
    assert read(chunks_every(clock, 1.0, [b"ab", b"cd", b"e"]), clock, declared=5) == b"abcde"


def test_drip_fed_body_fails_at_the_deadline_however_it_trickles():
    clock = Clock()
    with pytest.raises(ReplyTimeout) as exc:
        read(chunks_every(clock, 0.5, [b"x"] * 1000), clock)
    assert clock.now == 10.0  # the chunk that arrived at the deadline was the last one read
    assert "within 10s (CHATQ_PROVIDER_TIMEOUT, per call): 20 bytes had arrived" in str(exc.value)
    assert exc.value.type == "ProviderTimeout" and exc.value.retryable


def test_declared_oversize_is_refused_before_reading():
    def untouchable():
        raise AssertionError("read")
        yield b""

    with pytest.raises(ReplyTooLarge) as exc:
        read(untouchable(), Clock(), declared=1001)
    assert "1001 bytes, over the limit of 1000 (CHATQ_PROVIDER_MAX_REPLY_BYTES)" in str(exc.value)
    assert exc.value.type == "ProviderReplyTooLarge" and not exc.value.retryable


def test_undeclared_oversize_stops_reading_at_the_limit():
    clock = Clock()
    parts = chunks_every(clock, 0.1, [b"x" * 400] * 10)
    with pytest.raises(ReplyTooLarge, match="over the limit of 1000 bytes"):
        read(parts, clock)
    assert clock.now == pytest.approx(0.3)  # the third chunk crossed it; no fourth was read


def test_a_failed_read_is_a_timeout_after_the_deadline_and_a_broken_connection_before():
    clock = Clock()
    with pytest.raises(ReplyBroken, match="broke while reading its reply: OSError"):
        read(chunks_every(clock, 1.0, [b"ab"], then=OSError("reset")), clock)
    clock = Clock()
    with pytest.raises(ReplyTimeout, match="2 bytes had arrived"):
        read(chunks_every(clock, 6.0, [b"ab"], then=OSError("shut down")), clock)


def test_reply_errors_become_job_errors():
    err = classify(ReplyTooLarge("too big"))
    assert isinstance(err, ProviderError) and err.error.type == "ProviderReplyTooLarge"
    assert err.error.message == "too big" and not err.error.retryable
    assert classify(BadReply("html")).error.retryable


# --- the whole call under one deadline ----------------------------------------------------------------

def test_provider_cuts_a_reply_stalled_across_its_deadline(fake_openai):
    """The reply pauses 3.3 s between bytes, under the 4 s read timeout: only the deadline ends it."""
    provider = Provider(Settings(openai_base_url=fake_openai.base_url, openai_api_key="k",
                                 provider_timeout=4, provider_retries=0))
    text = f"[[fault:drip bps=0.3]] {uuid.uuid4().hex}"
    started = time.monotonic()
    with pytest.raises(ProviderError) as exc:
        asyncio.run(provider.complete({"model": "m", "messages": [{"role": "user", "content": text}]}))
    assert exc.value.error.type == "ProviderTimeout" and "bytes had arrived" in exc.value.error.message
    assert time.monotonic() - started < 6.0  # the next byte was due at 6.7 s


def test_a_paced_stream_hands_its_socket_to_each_wait_and_loses_nothing(fake_openai):
    """Each paced wait gets the reply's socket (the SDK's aiohttp response still leads to it), which
    it may pause while it waits; the reply comes out whole."""
    provider = Provider(Settings(openai_base_url=fake_openai.base_url, openai_api_key="k", provider_retries=0))
    sockets: list = []
    texts: list[str] = []

    async def pace(socket):
        sockets.append(socket)
        socket.pause_reading()
        await asyncio.sleep(0.02)
        socket.resume_reading()

    async def main():
        request = {"model": "m", "messages": [{"role": "user", "content": "[[stream delay=0.005 words=30]]"}]}
        try:
            return await provider.complete(request, on_delta=texts.append, pace=pace)
        finally:
            await provider.aclose()

    completion = asyncio.run(main())
    assert len(sockets) >= 2 and all(isinstance(s, asyncio.Transport) for s in sockets), \
        "the SDK's aiohttp response leads to its socket"
    assert len(set(map(id, sockets))) == 1, "one socket for the reply"
    content = completion.choices[0].message.content
    assert "".join(texts) == content and len(content.split()) >= 30


# --- through real workers ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def replies_fleet(tmp_path_factory, fake_openai):
    fleet = Fleet(tmp_path_factory.mktemp("replies"), fake_openai.base_url, provider_timeout="1",
                  provider_retries="2", provider_backoff_max="0.2", provider_max_reply_bytes=str(MAX_REPLY))
    fleet.start_worker(10)
    yield fleet
    fleet.stop()


@pytest.fixture
def rc(replies_fleet):
    return replies_fleet.client()


def sid() -> str:
    return f"r-{uuid.uuid4().hex[:10]}"


def test_a_drip_feeding_provider_fails_each_call_at_its_deadline(rc, fake_openai):
    s = sid()
    text = f"[[fault:drip bps=20]] {s}"  # ~350 bytes: 17 s a call without the deadline
    job = rc.chat(text, s, timeout=60)
    assert job.status == "failed" and job.error.type == "ProviderTimeout" and job.error.retryable
    assert "within 1s (CHATQ_PROVIDER_TIMEOUT, per call)" in job.error.message
    assert job.provider_retries == 2 and len(fake_openai.recorded(s)) == 3
    assert (job.finished_at - job.started_at).total_seconds() < 12  # three calls cut at ~1 s, not 51 s


def test_a_drip_once_is_retried_in_place(rc):
    job = rc.chat(f"[[fault:drip bps=20 n=1]] {sid()}", timeout=60)
    assert job.status == "succeeded", job.error
    assert job.provider_retries == 1 and job.last_error.type == "ProviderTimeout"


@pytest.mark.parametrize("kind,fragment", [
    ("html", "the provider's 200 reply is not JSON (text/html, "),
    ("text", "the provider's 200 reply is not JSON (application/json, "),
    ("notchat", "the provider's 200 reply is not a chat completion: id: Field required"),
    ("nochoices", "the provider's 200 reply has no choices"),
])
def test_garbage_replies_fail_clearly_after_retries(rc, fake_openai, kind, fragment):
    s = sid()
    job = rc.chat(f"[[fault:{kind}]] {s}", s, timeout=60)
    assert job.status == "failed" and job.error.type == "ProviderBadResponse", job.error
    assert fragment in job.error.message and job.error.retryable
    assert job.provider_retries == 2 and len(fake_openai.recorded(s)) == 3
    assert job.result is None


def test_garbage_once_is_retried_in_place(rc):
    s = sid()
    job = rc.chat(f"[[fault:html n=1]] {s}", s, timeout=60)
    assert job.status == "succeeded", job.error
    assert job.provider_retries == 1 and job.last_error.type == "ProviderBadResponse"
    assert [m.role for m in rc.get_session(s).messages] == ["user", "assistant"]


def test_an_oversized_reply_fails_at_once_and_is_not_stored(rc, fake_openai):
    s = sid()
    job = rc.chat(f"[[fault:huge bytes={2 * MAX_REPLY}]] {s}", s, timeout=60)
    assert job.status == "failed" and job.error.type == "ProviderReplyTooLarge" and not job.error.retryable
    assert f"over the limit of {MAX_REPLY} bytes (CHATQ_PROVIDER_MAX_REPLY_BYTES)" in job.error.message
    assert job.provider_retries == 0 and len(fake_openai.recorded(s)) == 1 and job.result is None
    assert all(len(m.content or "") < MAX_REPLY for m in rc.get_session(s).messages)
    under = rc.chat(f"[[fault:huge bytes={MAX_REPLY // 2}]] {s}", s, timeout=60)
    assert under.status == "succeeded" and under.result.content == "x" * (MAX_REPLY // 2)


# --- a streamed reply: SSE framing and chunk assembly (pure, against the test server's own chunks) ------

def _sse(chunks: list[dict], crlf: bool = False) -> bytes:
    end = "\r\n" if crlf else "\n"
    return "".join(f"data: {json.dumps(c)}{end}{end}" for c in chunks).encode() + f"data: [DONE]{end}{end}".encode()


def _assembled(data: bytes, piece: int) -> tuple[StreamAssembly, list[str], bool]:
    lines, assembly, texts, done = SSELines(), StreamAssembly(), [], False
    for i in range(0, len(data), piece):
        for payload in lines.feed(data[i:i + piece]):
            if payload == b"[DONE]":
                done = True
            elif text := assembly.add(json.loads(payload)):
                texts.append(text)
    return assembly, texts, done


@pytest.mark.parametrize("piece", [1, 7, 4096])
@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("text", ["Hello there, how are you today?", '[[tool:add {"a": 2, "b": 3}]]'])
def test_a_streamed_reply_assembles_into_the_whole_one_however_it_is_cut(piece, crlf, text):
    from chatq.testing.server import stream_chunks

    whole = offline_model.complete({"model": "m", "messages": [{"role": "user", "content": text}]})
    chunks, _ = stream_chunks(whole, include_usage=True)
    assembly, texts, done = _assembled(_sse(chunks, crlf), piece)
    assert done
    streamed = assembly.completion()
    expected = parse_completion(json.dumps(whole).encode())
    assert streamed.choices[0].message == expected.choices[0].message
    assert streamed.choices[0].finish_reason == expected.choices[0].finish_reason
    assert streamed.usage == expected.usage and streamed.id == expected.id and streamed.model == expected.model
    assert "".join(texts) == (expected.choices[0].message.content or "")


def test_a_stream_that_reports_an_error_or_says_nothing_is_a_bad_reply():
    with pytest.raises(BadReply, match="reported an error: overloaded"):
        StreamAssembly().add({"error": {"message": "overloaded"}})
    with pytest.raises(BadReply, match="without a single chunk"):
        StreamAssembly().completion()
    with pytest.raises(BadReply, match="not a JSON object"):
        StreamAssembly().add(["no"])
