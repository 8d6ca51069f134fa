"""Pure logic, tested directly: history window, tool schemas, retry policy, rate limit, encoding."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid

import httpx
import openai
import pytest
import redis
import redis.asyncio as aioredis
from pydantic import BaseModel

from chatq.tasks.agent_profiles import load_profiles
from chatq.tasks.batch import OpenAIResultLine, openai_result
from chatq.tasks.errors import InvalidRequest
from chatq.tasks.job_store import decode_job, encode_job
from chatq.tasks.models import FunctionCall, Job, JobError, JobResult, Message, ToolCall, Usage
from chatq.tasks.settings import Settings
from chatq.testing.server import ERRORS
from chatq.worker.history_window import units, window
from chatq.worker.provider import Provider, ProviderError, _clip, _retry_after, classify
from chatq.worker.rate_limit import RateLimiter
from chatq.worker.tools import ToolImportError, ToolRegistry, import_tool, make_tool, tool

from .conftest import BROKER_URL, REDIS_URL


def user(text: str) -> Message:
    return Message(role="user", content=text)


def call(i: int) -> list[Message]:
    tc = ToolCall(id=f"c{i}", function=FunctionCall(name="add", arguments="{}"))
    return [Message(role="assistant", tool_calls=[tc]), Message(role="tool", tool_call_id=f"c{i}", content="1")]


def test_units_keep_tool_calls_with_their_results():
    history = [user("a"), *call(1), Message(role="assistant", content="done")]
    assert [len(u) for u in units(history)] == [1, 2, 1]


def test_window_takes_newest_turns_within_budget_and_starts_at_a_user_message():
    history = []
    for i in range(10):
        history += [user(f"question {i} " * 5), *call(i), Message(role="assistant", content=f"answer {i}")]
    current = [user("now")]
    picked = window(history, current, budget=120)
    assert picked and picked[0].role == "user" and picked[-1].content == "answer 9"
    assert picked == history[-len(picked):]
    for i, m in enumerate(picked):
        if m.role == "tool":
            assert picked[i - 1].tool_calls[0].id == m.tool_call_id
    assert window(history, current, budget=1) == []
    assert window(history, current, budget=10**6) == history


class Q(BaseModel):
    text: str


def test_tool_schema_from_type_hints_and_from_a_model():
    def add(a: int, b: int = 2) -> int:
        """Add."""
        return a + b

    t = make_tool(add)
    params = t.schema()["function"]["parameters"]
    assert params["required"] == ["a"] and params["properties"]["b"]["default"] == 2
    assert asyncio.run(t.call('{"a": 1}')) == "3"

    @tool(name="search")
    def find(q: Q) -> list[str]:
        return [q.text]

    assert find.__chatq_tool__.name == "search"
    assert asyncio.run(find.__chatq_tool__.call('{"text": "x"}')) == '["x"]'
    assert find.__chatq_tool__.schema()["function"]["parameters"]["required"] == ["text"]


def test_tool_imports_fail_clearly():
    with pytest.raises(ToolImportError, match="expected 'module:function'"):
        import_tool("nocolon")
    with pytest.raises(ToolImportError, match="does not import"):
        import_tool("chatq.worker.builtin_tools:nope")
    reg = ToolRegistry.from_specs(["chatq.worker.builtin_tools:add", "chatq.worker.builtin_tools:now_utc"])
    assert reg.names() == ["add", "current_time"]


def _sdk_error(base_url: str, text: str) -> openai.APIError:
    sdk = openai.OpenAI(api_key="test", base_url=base_url, max_retries=0, timeout=5)
    with pytest.raises(openai.APIError) as exc:
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": text}])
    return exc.value


def test_classify_real_sdk_errors(fake_openai):
    tag = uuid.uuid4().hex
    quota = classify(_sdk_error(fake_openai.base_url, f"[[fault:quota]] {tag}"))
    assert quota.error.type == "InsufficientQuota" and not quota.error.retryable
    assert "quota" in quota.error.message
    message, type_, code = ERRORS["quota"]
    assert quota.error.provider_response.model_dump() == {
        "status_code": 429, "error": {"message": message, "type": type_, "param": None, "code": code}}, \
        "the provider's own error response is kept as it answered"
    limited = classify(_sdk_error(fake_openai.base_url, f"[[fault:429 retry_after=7]] {tag}"))
    assert limited.error.type == "ProviderHTTP429" and limited.error.retryable and limited.retry_after == 7.0
    assert classify(_sdk_error(fake_openai.base_url, f"[[fault:500]] {tag}")).error.retryable
    bad = classify(_sdk_error(fake_openai.base_url, f"[[fault:400]] {tag}"))
    assert not bad.error.retryable and "Invalid request" in bad.error.message
    assert bad.error.provider_response.status_code == 400
    assert bad.error.provider_response.error.message == ERRORS[400][0]
    assert classify(_sdk_error(fake_openai.base_url, f"[[drop]] {tag}-2")).error.provider_response is None
    dropped = classify(_sdk_error(fake_openai.base_url, f"[[drop]] {tag}"))
    assert dropped.error.type == "ProviderConnectionError" and dropped.error.retryable
    # A gateway's HTML page: openai 1.x puts the whole page in the message, 2.x none of it.
    page = classify(_sdk_error(fake_openai.base_url, f"[[fault:502 html=1]] {tag}"))
    assert page.error.type == "ProviderHTTP502" and page.error.retryable
    assert page.error.message.startswith("provider returned 502") and len(page.error.message) <= 501
    kept = page.error.provider_response
    assert kept.status_code == 502 and (kept.error.type, kept.error.param, kept.error.code) == (None, None, None)
    assert page.error.message == f"provider returned 502: {kept.error.message}"
    # vLLM's error object is the body itself, with a numeric code.
    vllm = openai.BadRequestError("Error code: 400", response=httpx.Response(
        400, request=httpx.Request("POST", "http://vllm/v1/chat/completions")), body={
        "object": "error", "message": "max_tokens is too large", "type": "BadRequestError", "param": "max_tokens",
        "code": 400})
    assert classify(vllm).error.provider_response.model_dump() == {"status_code": 400, "error": {
        "message": "max_tokens is too large", "type": "BadRequestError", "param": "max_tokens", "code": "400"}}
    assert _clip("x" * 500) == "x" * 500 and _clip("x" * 501) == "x" * 500 + "…"


def test_a_failed_jobs_openai_batch_line_is_the_response_it_got_or_the_error_it_had_instead():
    kept = JobError(type="ProviderHTTP404", message="provider returned 404: gone", provider_response={
        "status_code": 404, "error": {"message": "gone", "type": "invalid_request_error", "code": "model_not_found"}})
    line = openai_result("c1", "j1", "failed", None, kept.model_dump_json(), None).model_dump(mode="json")
    assert line == {"id": "batch_req_j1", "custom_id": "c1", "error": None, "response": {
        "status_code": 404, "request_id": "j1", "body": {"error": {
            "message": "gone", "type": "invalid_request_error", "param": None, "code": "model_not_found"}}}}
    # A record from before workers kept the response: its status from the error's type, chatq's message.
    old = JobError(type="ProviderHTTP503", message="provider returned 503: busy", retryable=True)
    assert openai_result("c2", "j2", "failed", None, old.model_dump_json(), None).model_dump()["response"] == {
        "status_code": 503, "request_id": "j2",
        "body": {"error": {"message": "provider returned 503: busy", "type": None, "param": None, "code": None}}}
    tools = JobError(type="MaxToolIterations", message="too many")
    assert openai_result("c3", "j3", "failed", None, tools.model_dump_json(), None).model_dump() == {
        "id": "batch_req_j3", "custom_id": "c3", "response": None,
        "error": {"code": "MaxToolIterations", "message": "too many"}}
    with pytest.raises(ValueError, match="a response or an error"):
        OpenAIResultLine(id="x", custom_id="c", response=None, error=None)


def test_retry_after_header_forms():
    assert _retry_after({"retry-after-ms": "1500"}) == 1.5
    assert _retry_after({"retry-after": "2"}) == 2.0
    assert _retry_after({"retry-after": "soon"}) is None
    assert _retry_after(None) is None


def test_retries_in_place_then_gives_up():
    settings = Settings(provider_retries=2, provider_backoff_max=5)
    provider = Provider(settings)
    calls, slept = [], []

    async def failing(request, on_delta=None, pace=None, stream=True):
        calls.append(request)
        raise openai.APIConnectionError(request=None)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def on_retry(error: JobError, delay: float) -> None:
        retries.append(error)

    provider._call = failing
    retries: list[JobError] = []
    with pytest.raises(ProviderError) as exc:
        asyncio.run(provider.complete({"model": "m"}, on_retry=on_retry, sleep=sleep))
    assert len(calls) == 3 and len(slept) == 2 and len(retries) == 2
    assert exc.value.error.type == "ProviderConnectionError"
    assert all(0 <= s <= 5 for s in slept)
    assert 3.0 <= provider.backoff(0, retry_after=3.0) <= 3.1


def test_rate_limiter_shares_a_minute_budget():
    now = [120.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    async def main() -> None:
        r = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        limiter = RateLimiter(r, f"unit-{uuid.uuid4().hex[:6]}")

        def acquire(model: str, **kw) -> float:
            return limiter.acquire(model, **kw, sleep=sleep, clock=lambda: now[0])

        for _ in range(2):
            assert await acquire("m", rpm=2, tpm=None, tokens=10) == 0
        waited = await acquire("m", rpm=2, tpm=None, tokens=10)
        assert 59 < waited <= 60.1 and len(slept) == 1
        assert await acquire("t", rpm=None, tpm=100, tokens=80) == 0
        assert await acquire("t", rpm=None, tpm=100, tokens=80) > 0
        await r.aclose()

    asyncio.run(main())


def test_job_encoding_round_trips():
    job = Job(job_id="j", session_id="s", message="hi", metadata={"a": [1, 2]},
              result=JobResult(content="x", message=Message(role="assistant", content="x"), usage=Usage(total_tokens=3)),
              last_error=JobError(type="T", message="m", retryable=True))
    assert decode_job(encode_job(job)) == job


def test_agents_file_errors_are_clear(tmp_path):
    bad = tmp_path / "a.toml"
    bad.write_text("[agents.x]\nunknown_key = 1\n")
    with pytest.raises(InvalidRequest, match="agent 'x' is invalid"):
        load_profiles(Settings(agents_file=bad))
    bad.write_text("not toml [")
    with pytest.raises(InvalidRequest, match="cannot read agents file"):
        load_profiles(Settings(agents_file=bad))
    good = tmp_path / "g.toml"
    good.write_text('[agents.helper]\nmodel = "gpt-4o"\nhistory_tokens = 100\n')
    profiles = load_profiles(Settings(agents_file=good))
    assert set(profiles) == {"helper", "default"} and profiles["helper"].history_tokens == 100


def test_window_over_the_tail_read_equals_window_over_everything():
    history = []
    for i in range(60):
        history += [user(f"q{i} " * (i % 7)), *call(i), Message(role="assistant", content=f"a{i} " * (i % 5))]
    for budget in (5, 40, 120, 333, 900):
        limit = budget // 4 + 1
        assert window(history[-limit:], [user("now")], budget) == window(history, [user("now")], budget)


def test_a_wake_up_pushed_directly_is_the_message_celery_sends_but_for_its_ids():
    """What ``WakePublisher`` pushes to a Redis broker, and what ``send_task`` pushes for the same
    wake-up, decoded: equal once the per-message IDs are set aside."""
    from chatq.tasks.celery_app import RUN_SESSION, make_app
    from chatq.tasks.wakeups import WakePublisher

    queue = f"wake{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=REDIS_URL, broker_url=BROKER_URL, queue=queue)
    app = make_app(settings)
    publisher = WakePublisher(app, queue)
    assert publisher.broker is not None  # a redis:// broker: pushed directly
    broker = redis.Redis.from_url(BROKER_URL)
    try:
        for job_id in ("ab" * 16, None):  # a producer's wake-up names the head; the sweeper's does not
            publisher.wake("s:1", "ns.t.a", job_id)
            args, kwargs = ["s:1"], {"job_id": job_id, "namespace": "ns.t.a"}
            app.send_task(RUN_SESSION, args=args, kwargs=kwargs, queue=queue)
            ours = json.loads(broker.rpop(queue))  # the oldest first, as a worker takes them
            celerys = json.loads(broker.rpop(queue))
            for message in (ours, celerys):
                headers, props = message["headers"], message["properties"]
                assert headers["id"] == headers["root_id"] == props["correlation_id"]
                assert uuid.UUID(props.pop("delivery_tag")) and uuid.UUID(headers.pop("root_id"))
                del headers["id"], props["correlation_id"]
                message["body"] = json.loads(base64.b64decode(message["body"]))
            assert ours == celerys
            assert ours["body"][:2] == [args, kwargs]
    finally:
        broker.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")
        broker.close()


def test_a_broker_a_direct_push_would_not_reproduce_goes_through_celery():
    from chatq.tasks.celery_app import make_app
    from chatq.tasks.wakeups import WakePublisher, redis_broker

    app = make_app(Settings(redis_url=REDIS_URL, broker_url=BROKER_URL))
    assert redis_broker(app) == BROKER_URL
    app.conf.broker_transport_options = {"global_keyprefix": "x:"}
    assert redis_broker(app) is None and WakePublisher(app, "q").broker is None
    assert redis_broker(make_app(Settings(broker_url="amqp://guest@localhost//"))) is None


@pytest.mark.parametrize(("given", "mode"), [("auto", "auto"), ("always", "always"), ("off", "off"),
                                             ("true", "always"), ("False", "off"), ("0", "off"), (True, "always")])
def test_stream_setting_reads_its_modes_and_the_old_booleans(given, mode):
    assert Settings(stream=given).stream == mode


def test_stream_setting_refuses_anything_else():
    with pytest.raises(ValueError, match="stream"):
        Settings(stream="sometimes")
