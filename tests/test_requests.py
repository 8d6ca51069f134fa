"""Requests as rich as the OpenAI API's (issue 13, parts 1-3): content parts, per-request parameters and
structured output. The rules are tested directly; then through real workers, the real SDK and the
test server, which records what the provider received: an image part reaches it unchanged and stays
in the history, parameters reach the request, forbidden ones are refused at every door with nothing
written (and by the worker when the door could not know), and JSON replies are parsed or fail clearly.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import uuid
from typing import Literal

import jsonschema
import pytest
from openai.lib._parsing import type_to_response_format_param
from pydantic import BaseModel

from chatq.api.app import create_app
from chatq.tasks.agent_profiles import load_profiles
from chatq.tasks.batch import BatchClient, BatchInvalid
from chatq.tasks.client import ChatClient
from chatq.tasks.content import inline_chars, text_chars, validate_content
from chatq.tasks.errors import InvalidRequest
from chatq.tasks.job_store import decode_job, encode_job
from chatq.tasks.models import Job, JobStatus
from chatq.tasks.request_params import apply, check_allowed, forbidden, validate_params
from chatq.tasks.settings import Settings
from chatq.tasks.structured_output import StructuredOutputInvalid, check_response_format, parse_reply
from chatq.testing.server import broken_json
from chatq.worker.offline_model import complete, describe, instance_of

from .conftest import ROOT
from .test_api import KEY_A, api_settings, http, serve
from .test_door import data_keys

PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
IMAGE = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}", "detail": "low"}}


def sid(prefix: str = "rq") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class City(BaseModel):
    name: str
    country: str


class Person(BaseModel):
    name: str
    age: int
    mood: Literal["happy", "sad"]
    tags: list[str]
    home: City
    verified: bool
    score: float | None


# --- the rules ----------------------------------------------------------------------------------

@pytest.mark.parametrize("parts", [
    [{"type": "text", "text": "what is this?"}, IMAGE],
    [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
    [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}],
    [{"type": "file", "file": {"file_id": "file-abc"}}],
    [{"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}}],
])
def test_content_parts_of_the_sdks_types_are_kept_as_given(parts):
    given = json.loads(json.dumps(parts))
    assert validate_content(parts) is parts and parts == given


@pytest.mark.parametrize("parts,fragment", [
    ([{"type": "video_url", "video_url": {"url": "https://x"}}],
     "message[0] has type 'video_url': a user message's content parts are text, image_url, input_audio, file"),
    ([{"type": "text", "text": "hi", "cache": True}], "message[0].cache is not a field the API defines there"),
    ([{"type": "text", "text": 5}], "message[0].text: Input should be a valid string"),
    ([{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}], "must be an http(s) URL or a base64 data: URL"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png;base64,***"}}], "is not base64"),
    ([{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}], "not data:<media type>;base64,<data>"),
    ([{"type": "image_url", "image_url": {"url": "https://x", "detail": "max"}}], "message[0].image_url.detail"),
    ([{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "ogg"}}], "input_audio.format"),
    ([{"type": "file", "file": {}}], "needs file_data (base64 or a data: URL) or file_id"),
    ([{"text": "no type"}], "message[0] has type None"),
    (["hi"], "message[0] must be a content part"),
    ([], "empty list of content parts"),
    ({"type": "text", "text": "hi"}, "must be a string or a list of content parts, not dict"),
])
def test_content_parts_the_sdk_does_not_define_are_refused_by_name(parts, fragment):
    with pytest.raises(InvalidRequest, match=re.escape(fragment)):
        validate_content(parts)


def test_text_and_inline_data_are_counted_apart():
    parts = [{"type": "text", "text": "abc"}, {"type": "text", "text": "de"}, IMAGE,
             {"type": "file", "file": {"file_id": "file-1", "filename": "x.pdf"}}]
    assert text_chars(parts) == 5 and text_chars("abcd") == 4
    assert inline_chars(parts) == len(IMAGE["image_url"]["url"]) + len("low") + len("file-1") + len("x.pdf")


def test_the_offline_model_describes_what_it_cannot_see():
    assert describe([{"type": "text", "text": "look:"}, IMAGE]) == "look: [image image/png 70 bytes] "
    assert describe([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]).strip() == \
        "[image https://example.com/cat.png]"
    assert describe([{"type": "file", "file": {"file_id": "file-1"}}]).strip() == "[file file-1]"


@pytest.mark.parametrize("params", [
    {"model": "gpt-4o"}, {"model": "llama3.1:8b"}, {"temperature": 0}, {"temperature": 1.5}, {"temperature": None},
    {"top_p": 0.9}, {"max_tokens": 5}, {"max_completion_tokens": 7}, {"stop": "\n"}, {"stop": ["a", "b"]},
    {"seed": 42}, {"response_format": {"type": "text"}}, {"response_format": {"type": "json_object"}},
    {"response_format": type_to_response_format_param(City)}, {"tool_choice": "none"},
    {"tool_choice": {"type": "function", "function": {"name": "add"}}}, {"parallel_tool_calls": False},
    {"reasoning_effort": "low"}, {"extra_body": {"top_k": 20, "repetition_penalty": 1.1}},
])
def test_allowed_parameters_pass_as_given(params):
    assert validate_params(json.loads(json.dumps(params))) == params


@pytest.mark.parametrize("params,fragment", [
    ({"temperature": 2.5}, "params.temperature is 2.5; it must be from 0 to 2"),
    ({"temperature": "0"}, "params.temperature: Input should be a valid number"),
    ({"temperature": True}, "params.temperature: Input should be a valid number"),
    ({"top_p": -0.1}, "params.top_p is -0.1"),
    ({"max_tokens": 0}, "params.max_tokens is 0"),
    ({"max_tokens": 1.5}, "params.max_tokens: Input should be a valid integer"),
    ({"max_tokens": 5, "max_completion_tokens": 5}, "give one"),
    ({"stop": 3}, "params.stop must be a string, a list of strings, or null"),
    ({"stop": []}, "params.stop is an empty list"),
    ({"seed": "42"}, "params.seed: Input should be a valid integer"),
    ({"response_format": {"type": "xml"}}, "params.response_format.type is 'xml'; the API's are text, json_schema"),
    ({"response_format": {"type": "json_schema"}}, "params.response_format.json_schema: Field required"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}}, "json_schema.name must be 1-64"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
     "params.response_format.json_schema.schema.type is not a valid JSON Schema"),
    ({"tool_choice": "sometimes"}, "params.tool_choice must be 'none', 'auto', 'required'"),
    ({"tool_choice": {"type": "function", "function": {}}}, "params.tool_choice.function.name: Field required"),
    ({"parallel_tool_calls": "yes"}, "params.parallel_tool_calls: Input should be a valid boolean"),
    ({"reasoning_effort": "extreme"}, "params.reasoning_effort: Input should be"),
    ({"model": ""}, "params.model must be a model name"),
    ({"model": "gpt 4"}, "params.model must be a model name"),
    ({"n": 2}, "params.n is a chat-completions parameter chatq does not take per request"),
    ({"logprobs": True}, "params.logprobs is a chat-completions parameter chatq does not take"),
    ({"frobnicate": 1}, "params.frobnicate is not a chat-completions parameter"),
    ({"messages": []}, "params.messages is chatq's to set"),
    ({"stream": False}, "params.stream is chatq's to set"),
    ({"tools": []}, "params.tools is chatq's to set"),
    ({"extra_body": {"temperature": 9}}, "params.extra_body.temperature is a chat-completions parameter: give it as "
                                         "params.temperature"),
    ({"extra_body": {"stream": True}}, "params.extra_body.stream is a chat-completions parameter"),
    ({"extra_body": []}, "params.extra_body must be an object"),
    ([("temperature", 0)], "params must be an object"),
])
def test_parameters_are_checked_against_the_sdks_types_and_the_allow_list(params, fragment):
    with pytest.raises(InvalidRequest, match=re.escape(fragment)):
        validate_params(params)


def test_a_pydantic_model_becomes_the_sdks_own_strict_json_schema_format():
    checked = validate_params({"response_format": Person})
    assert checked["response_format"] == type_to_response_format_param(Person)
    assert checked["response_format"]["json_schema"]["strict"] is True


def test_the_jobs_parameters_go_over_the_agents():
    agent = {"model": "m", "messages": [], "temperature": 0.2, "max_tokens": 100, "tools": [{"t": 1}]}
    assert apply(agent, {"model": "big", "temperature": None, "max_completion_tokens": 9,
                         "extra_body": {"top_k": 3}}) == {
        "model": "big", "messages": [], "max_completion_tokens": 9, "tools": [{"t": 1}], "top_k": 3}
    assert apply(agent, {}) == agent


def test_an_agents_policy_allows_all_none_or_a_list(tmp_path):
    agents = tmp_path / "agents.toml"
    agents.write_text('[agents.open]\n[agents.locked]\nallow_overrides = false\n'
                      '[agents.some]\nallow_overrides = ["temperature", "response_format"]\nstructured_output_retries = 0\n')
    profiles = load_profiles(Settings(agents_file=agents))
    assert profiles["open"].allow_overrides is True and profiles["open"].structured_output_retries == 1
    assert forbidden({"temperature": 0, "model": "x"}, profiles["some"].allow_overrides) == ["model"]
    assert forbidden({"temperature": 0}, profiles["locked"].allow_overrides) == ["temperature"]
    check_allowed({"temperature": 0}, profiles["some"].allow_overrides, "some")
    with pytest.raises(InvalidRequest, match="agent 'locked' does not allow overriding temperature"):
        check_allowed({"temperature": 0}, False, "locked")
    agents.write_text('[agents.bad]\nallow_overrides = ["n"]\n')
    with pytest.raises(InvalidRequest, match="allow_overrides names 'n'"):
        load_profiles(Settings(agents_file=agents))


def test_structured_replies_are_parsed_or_refused_naming_the_first_violation():
    fmt = type_to_response_format_param(City)
    assert parse_reply('{"name": "Oslo", "country": "NO"}', fmt) == {"name": "Oslo", "country": "NO"}
    with pytest.raises(StructuredOutputInvalid, match=r"schema 'City': at \$: 'country' is a required property"):
        parse_reply('{"name": "Oslo"}', fmt)
    with pytest.raises(StructuredOutputInvalid, match=r"at \$.name: 5 is not of type 'string'"):
        parse_reply('{"name": 5, "country": "NO"}', fmt)
    with pytest.raises(StructuredOutputInvalid, match="not valid JSON.*cut at the token limit"):
        parse_reply('{"name": "Os', fmt, finish_reason="length")
    with pytest.raises(StructuredOutputInvalid, match="refused"):
        parse_reply(None, fmt, refusal="I can't help with that")
    assert parse_reply("[1, 2]", {"type": "json_schema", "json_schema": {"name": "any"}}) == [1, 2]
    assert parse_reply('{"a": 1}', {"type": "json_object"}) == {"a": 1}
    with pytest.raises(StructuredOutputInvalid, match="not an object"):
        parse_reply("[1]", {"type": "json_object"})
    with pytest.raises(StructuredOutputInvalid, match="empty"):
        parse_reply("  ", {"type": "json_object"})
    check_response_format({"type": "json_schema", "json_schema": {"name": "ok", "schema": {"type": "object"}}})


@pytest.mark.parametrize("model", [City, Person])
def test_the_offline_model_answers_a_schema_with_an_instance_and_the_test_server_can_break_it(model):
    fmt = type_to_response_format_param(model)
    schema = fmt["json_schema"]["schema"]
    reply = complete({"messages": [{"role": "user", "content": "hi"}], "response_format": fmt})
    value = json.loads(reply["choices"][0]["message"]["content"])
    jsonschema.validate(value, schema)
    assert model.model_validate(value).name.startswith("echo #1: hi")
    assert not jsonschema.Draft202012Validator(schema).is_valid(json.loads(broken_json(fmt)))
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken_json({"type": "json_object"}))


def test_instances_of_simple_schemas():
    assert instance_of({"type": "integer", "minimum": 3}) == 3
    assert instance_of({"type": "number", "exclusiveMinimum": 1}) == 2
    assert instance_of({"type": "string", "minLength": 5}, "ab") == "abxxx"
    assert instance_of({"type": "string", "maxLength": 2}, "abc") == "ab"
    assert instance_of({"enum": ["b", "a"]}) == "b"
    assert instance_of({"type": "array", "items": {"type": "boolean"}, "minItems": 2}) == [True, True]
    assert instance_of({"type": ["null", "string"]}, "t") == "t"
    assert instance_of({"allOf": [{"properties": {"a": {"const": 1}}, "required": ["a"]}]}) == {"a": 1}


def test_a_message_of_parts_is_stored_apart_and_a_string_that_looks_like_json_stays_a_string():
    parts = [{"type": "text", "text": "hi"}, IMAGE]
    job = Job(job_id="j", session_id="s", message=parts, params={"temperature": 0})
    fields = encode_job(job)
    assert "message" not in fields and json.loads(fields["message_parts"]) == parts
    assert decode_job(fields) == job
    text = Job(job_id="j", session_id="s", message="[1, 2]")
    assert encode_job(text)["message"] == "[1, 2]" and decode_job(encode_job(text)).message == "[1, 2]"


def test_the_door_counts_text_and_inline_data_against_their_own_limits(fleet):
    client = ChatClient(settings=fleet.settings.model_copy(update={"max_message_chars": 10, "max_inline_bytes": 100}))
    client.build_job([{"type": "text", "text": "0123456789"}, {"type": "image_url", "image_url": {"url": "https://x/y"}}])
    with pytest.raises(InvalidRequest, match="text parts are 11 characters; the limit is 10"):
        client.build_job([{"type": "text", "text": "01234"}, {"type": "text", "text": "567890"}])
    with pytest.raises(InvalidRequest, match=r"non-text parts .* are \d+ characters; the limit is 100 "):
        client.build_job([IMAGE])
    with pytest.raises(InvalidRequest, match="message is empty"):
        client.build_job([{"type": "text", "text": "  "}])
    with pytest.raises(InvalidRequest, match="lone surrogate"):
        client.build_job([{"type": "text", "text": "a\ud800"}])
    big = fleet.settings.model_copy(update={"max_params_bytes": 50})
    with pytest.raises(InvalidRequest, match="params are .* bytes as JSON; the limit is 50"):
        ChatClient(settings=big).build_job("hi", params={"extra_body": {"x": "y" * 60}})


# --- through real workers and the real SDK ------------------------------------------------------

def test_an_image_part_reaches_the_provider_unchanged_and_stays_in_the_history(client, fake_openai):
    session, tag = sid(), uuid.uuid4().hex[:8]
    parts = [{"type": "text", "text": f"what is in this picture {tag}?"}, IMAGE,
             {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    job = client.chat(parts, session, timeout=30)
    assert job.status == JobStatus.succeeded, job.error
    assert job.message == parts
    sent = fake_openai.recorded(contains=tag)
    assert sent and sent[-1]["messages"][-1] == {"role": "user", "content": parts}
    assert job.result.content.startswith(f"echo #1: what is in this picture {tag}? [image image/png 70 bytes] "
                                         "[image https://example.com/cat.png] | h=")
    history = client.get_session(session).messages
    assert history[0].role == "user" and history[0].content == parts
    later = client.chat(f"and now? {tag}-2", session, timeout=30)
    assert fake_openai.recorded(contains=f"{tag}-2")[-1]["messages"][0] == {"role": "user", "content": parts}, \
        "the next turn replays the parts as they were given"
    assert later.status == JobStatus.succeeded
    end = list(client.stream(job.job_id))[-1]
    assert end.type == "job.succeeded" and Job.model_validate(end.data) == client.get(job.job_id), \
        "the terminal event splices the stored parts back in as the job's message"


def test_parameters_reach_the_provider_over_the_agents(client, fake_openai):
    tag = uuid.uuid4().hex[:8]
    params = {"model": "gpt-4o-2024-08-06", "temperature": 0, "top_p": 0.5, "max_completion_tokens": 64,
              "stop": ["\n\n"], "seed": 7, "tool_choice": "none", "parallel_tool_calls": False,
              "reasoning_effort": "low", "extra_body": {"top_k": 20, "chat_template_kwargs": {"thinking": False}}}
    job = client.chat(f"params {tag}", sid(), params=params, timeout=30)
    assert job.status == JobStatus.succeeded, job.error
    assert job.params == params and job.result.usage.model == "chatq-offline:gpt-4o-2024-08-06"
    sent = fake_openai.recorded(contains=tag)[-1]
    for name, value in params.items():
        if name != "extra_body":
            assert sent[name] == value, name
    assert sent["top_k"] == 20 and sent["chat_template_kwargs"] == {"thinking": False} and "extra_body" not in sent
    assert sent["tools"] and "stream" not in sent, "chatq's own fields stay (nobody watched: asked whole)"
    plain = client.chat(f"defaults {tag}", sid(), timeout=30)
    assert "temperature" not in fake_openai.recorded(contains=f"defaults {tag}")[-1] and plain.params is None


@pytest.fixture(scope="module")
def strict_fleet(tmp_path_factory, fake_openai):
    """Workers whose agents forbid some or all overrides, and allow one structured-output retry or none."""
    from .conftest import Fleet

    tmp = tmp_path_factory.mktemp("strict")
    agents = tmp / "agents.toml"
    agents.write_text('[agents.default]\n[agents.locked]\nallow_overrides = false\n'
                      '[agents.tempered]\nallow_overrides = ["temperature", "response_format"]\n'
                      'structured_output_retries = 0\n')
    fleet = Fleet(tmp, fake_openai.base_url, agents_file=str(agents))
    fleet.wait_ready(fleet.start_worker(10))
    yield fleet
    fleet.stop()


FORBIDDEN = [("locked", {"temperature": 0}, "agent 'locked' does not allow overriding temperature "
                                           "(its allow_overrides: none)"),
             ("tempered", {"temperature": 0, "model": "gpt-4o"}, "agent 'tempered' does not allow overriding model")]
"""Agents of ``strict_fleet``, parameters each forbids, and what the refusal says."""


def bare_client(fleet) -> ChatClient:
    """A producer with no agents file: it knows the agents and their policies from what the workers published."""
    return ChatClient(settings=fleet.settings.model_copy(update={"agents_file": None}))


def test_forbidden_overrides_are_refused_at_every_door_and_nothing_is_written(strict_fleet):
    bare = bare_client(strict_fleet)
    r, ns = bare.r, strict_fleet.settings.namespace
    before = data_keys(r, ns)
    cases = FORBIDDEN
    for agent, params, fragment in cases:
        with pytest.raises(InvalidRequest, match=re.escape(fragment)):
            bare.submit("hi", sid(), agent, params=params)
    assert data_keys(r, ns) <= before, "the Python client wrote something"

    for agent, params, fragment in cases:
        argv = ["submit", "hi", "--agent", agent, *[a for k, v in params.items() if k != "model"
                                                    for a in ("--param", f"{k}={json.dumps(v)}")]]
        argv += ["--model", params["model"]] if "model" in params else []
        env = {k: v for k, v in strict_fleet.env.items() if k != "CHATQ_AGENTS_FILE"}
        out = subprocess.run([sys.executable, "-m", "chatq", *argv], cwd=ROOT, env=env, capture_output=True,
                             timeout=60, text=True)
        assert out.returncode == 2 and out.stderr.startswith("error: ") and fragment in out.stderr, out.stderr
        assert out.stdout == ""
    assert data_keys(r, ns) <= before, "the CLI wrote something"

    with serve(create_app(api_settings(), bare.settings)) as url, http(url, KEY_A) as c:
        for agent, params, fragment in cases:
            resp = c.post(f"/v1/sessions/{sid()}/messages", json={"message": "hi", "agent": agent, "params": params})
            assert resp.status_code == 422 and resp.json()["error"]["type"] == "invalid_request", resp.text
            assert fragment in resp.json()["error"]["message"]
    assert data_keys(r, ns) <= before, "the HTTP API wrote something"

    allowed = bare.chat("fine", sid(), "tempered", params={"temperature": 0.3}, timeout=30)
    assert allowed.status == JobStatus.succeeded and allowed.params == {"temperature": 0.3}


def test_openai_batch_lines_with_forbidden_overrides_are_refused_by_line_and_nothing_is_written(strict_fleet, tmp_path):
    """A line's body parameters are its request's overrides: one its agent forbids refuses the file at
    every door, naming the line, before anything is written."""
    bare = bare_client(strict_fleet)
    r, ns = bare.r, strict_fleet.settings.namespace
    lines = [{"custom_id": "fine", "message": "hi"}]
    lines += [{"custom_id": f"strict-{agent}", "agent": agent, "method": "POST", "url": "/v1/chat/completions",
               "body": {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                        **params}} for agent, params, _ in FORBIDDEN]
    expected = [(n, f"strict-{agent}", fragment) for n, (agent, _, fragment) in enumerate(FORBIDDEN, 2)]
    before = data_keys(r, ns)

    with pytest.raises(BatchInvalid) as exc:
        BatchClient(bare).submit(lines)
    assert [(e.line, e.custom_id) for e in exc.value.errors] == [(n, c) for n, c, _ in expected]
    for error, (n, _, fragment) in zip(exc.value.errors, expected):
        assert fragment in error.error and f"line {n}: {error.error}" in str(exc.value)
    assert data_keys(r, ns) <= before, "the Python client wrote something"

    path = tmp_path / "strict.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    env = {k: v for k, v in strict_fleet.env.items() if k != "CHATQ_AGENTS_FILE"}
    for command in (["run", path, "-o", tmp_path / "out.jsonl"], ["submit", path]):
        out = subprocess.run([sys.executable, "-m", "chatq", "batch", *map(str, command)], cwd=ROOT, env=env,
                             capture_output=True, timeout=60, text=True)
        assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith("error: 2 invalid line(s); nothing was submitted"), out.stderr
        for n, _, fragment in expected:
            assert f"line {n}: {fragment}" in out.stderr
    assert not (tmp_path / "out.jsonl").exists()
    assert data_keys(r, ns) <= before, "the CLI wrote something"

    body = "".join(json.dumps(line) + "\n" for line in lines)
    with serve(create_app(api_settings(), bare.settings)) as url, http(url, KEY_A) as c:
        resp = c.post("/v1/batches", content=body, headers={"Content-Type": "application/x-ndjson"})
        assert resp.status_code == 422 and resp.json()["error"]["type"] == "invalid_request", resp.text
        error = resp.json()["error"]
        assert error["message"] == "2 invalid line(s); nothing was submitted"
        assert [(d["line"], d["custom_id"]) for d in error["details"]] == [(n, c) for n, c, _ in expected]
        for detail, (_, _, fragment) in zip(error["details"], expected):
            assert fragment in detail["error"]
    assert data_keys(r, ns) <= before, "the HTTP API wrote something"


def test_a_worker_refuses_a_forbidden_override_that_the_door_could_not_know(strict_fleet):
    """A producer that read the fleet before this worker published (or never knew the agent's profile)
    lets the parameter through; the worker fails the job, naming the rule."""
    client = ChatClient(settings=strict_fleet.settings.model_copy(update={"agents_file": None}))
    client.r.hdel(client.keys.agent_overrides, "locked")
    try:
        assert client.override_policy("locked") is None
        job = client.chat("sneaky", sid(), "locked", params={"seed": 1}, timeout=30)
    finally:
        client.r.hset(client.keys.agent_overrides, "locked", "false")
    assert job.status == JobStatus.failed and job.error.type == "OverrideNotAllowed", job
    assert "agent 'locked' does not allow overriding seed" in job.error.message
    assert client.get_session(job.session_id).messages == [], "a refused job leaves no turn"


def test_a_json_schema_request_yields_parsed_and_streams_the_json(client, fake_openai):
    tag = uuid.uuid4().hex[:8]
    job = client.submit(f"describe a person {tag}", sid(), params={"response_format": Person}, stream=True)
    events = list(client.stream(job.job_id, timeout=30))
    job = client.get(job.job_id)
    assert job.status == JobStatus.succeeded, job.error
    person = Person.model_validate(job.result.parsed)
    assert person.name.startswith(f"echo #1: describe a person {tag}")
    assert json.loads(job.result.content) == job.result.parsed
    assert "".join(e.data["text"] for e in events if e.type == "message.delta") == job.result.content, \
        "the streamed deltas are the JSON text"
    sent = fake_openai.recorded(contains=tag)[-1]
    assert sent["response_format"] == type_to_response_format_param(Person) and sent["stream"] is True
    assert Job.model_validate(events[-1].data).result.parsed == job.result.parsed


def test_a_reply_that_breaks_the_schema_is_asked_for_again_then_fails_clearly(client, fake_openai):
    tag = uuid.uuid4().hex[:8]
    fmt = type_to_response_format_param(City)
    once = client.submit(f"city {tag} [[schema:break n=1]]", sid(), params={"response_format": fmt})
    events = list(client.stream(once.job_id, timeout=30))
    once = client.get(once.job_id)
    assert once.status == JobStatus.succeeded and City.model_validate(once.result.parsed), once.error
    retry = next(e for e in events if e.type == "provider.retry")
    assert retry.data["error"]["type"] == "StructuredOutputInvalid" and retry.data["call"] == 1
    assert once.provider_retries == 1 and once.last_error.type == "StructuredOutputInvalid"
    assert "".join(e.data["text"] for e in events if e.type == "message.delta" and e.data["call"] == 2) == \
        once.result.content, "the retried call's text is the reply; the voided call's is told apart by its number"

    always = client.chat(f"city {tag} [[schema:break]]", sid(), params={"response_format": fmt}, timeout=30)
    assert always.status == JobStatus.failed and always.error.type == "StructuredOutputInvalid"
    assert always.error.message == ("the reply does not match the schema 'City': at $: 'name' is a required property "
                                    "(after 2 calls)")
    assert len(fake_openai.recorded(contains=f"city {tag} [[schema:break]]")) == 2, "one retry: the agent's default"
    assert client.get_session(always.session_id).messages == []


def test_no_retry_when_the_agent_allows_none(strict_fleet, fake_openai):
    client = strict_fleet.client()
    tag = uuid.uuid4().hex[:8]
    job = client.chat(f"x {tag} [[schema:break]]", sid(), "tempered", params={"response_format": City}, timeout=30)
    assert job.status == JobStatus.failed and job.error.message.endswith("(after 1 call)")
    assert len(fake_openai.recorded(contains=tag)) == 1


def test_json_object_mode(client):
    ok = client.chat("json please", sid(), params={"response_format": {"type": "json_object"}}, timeout=30)
    assert ok.status == JobStatus.succeeded and ok.result.parsed == {"reply": ok.result.parsed["reply"]}
    assert ok.result.parsed["reply"].startswith("echo #1: json please")
    bad = client.chat("json please [[schema:break]]", sid(), params={"response_format": {"type": "json_object"}},
                      timeout=30)
    assert bad.status == JobStatus.failed and bad.error.type == "StructuredOutputInvalid"
    assert bad.error.message.startswith("the reply is not valid JSON: Expecting value at line 1 column 1")
    text = client.chat("plain", sid(), timeout=30)
    assert text.result.parsed is None


def test_parts_and_parameters_over_http_and_the_cli(fleet, fake_openai):
    tag = uuid.uuid4().hex[:8]
    parts = [{"type": "text", "text": f"over http {tag}"}, IMAGE]
    with serve(create_app(api_settings(max_body_bytes=1 << 20), fleet.settings)) as url, http(url, KEY_A) as c:
        resp = c.post(f"/v1/sessions/{sid()}/messages", json={
            "message": parts, "params": {"temperature": 0.1, "response_format": {"type": "json_object"}}})
        assert resp.status_code == 202, resp.text
        done = c.get(f"/v1/jobs/{resp.json()['job_id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded" and done["message"] == parts
        assert done["result"]["parsed"]["reply"].startswith(f"echo #1: over http {tag}")
        bad = c.post("/v1/chat", json={"message": [{"type": "video", "url": "x"}]})
        assert bad.status_code == 422 and "has type 'video'" in bad.json()["error"]["message"]
        bad = c.post("/v1/chat", json={"message": "hi", "params": {"n": 3}})
        assert bad.status_code == 422 and "params.n" in bad.json()["error"]["message"]
    assert fake_openai.recorded(contains=f"over http {tag}")[-1]["temperature"] == 0.1

    image = fleet.tmp / "pixel.png"
    image.write_bytes(base64.b64decode(PIXEL))
    out = subprocess.run([sys.executable, "-m", "chatq", "chat", f"cli {tag}", "--model", "gpt-4o-mini-2",
                          "--param", "temperature=0", "--param", "stop=[\"zz\"]", "--param", "seed=3",
                          "--image", str(image), "--json"],
                         cwd=ROOT, env=fleet.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job = Job.model_validate(json.loads(out.stdout.splitlines()[-1])["data"])
    assert job.message == [{"type": "text", "text": f"cli {tag}"}, {"type": "image_url", "image_url": {
        "url": f"data:image/png;base64,{PIXEL}"}}]
    sent = fake_openai.recorded(contains=f"cli {tag}")[-1]
    assert (sent["model"], sent["temperature"], sent["stop"], sent["seed"]) == ("gpt-4o-mini-2", 0, ["zz"], 3)
    out = subprocess.run([sys.executable, "-m", "chatq", "submit", "hi", "--param", "temperature=hot"],
                         cwd=ROOT, env=fleet.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr == "error: params.temperature: Input should be a valid number\n"
