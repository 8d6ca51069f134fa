"""Batches end to end: real Redis, real worker processes, the CLI through subprocesses.

Every reply is checked against ``echo_reply`` recomputed over the history the session must hold,
so a lost, duplicated or reordered turn fails the test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletion
from openai.types.shared import ErrorObject

from chatq.api.app import create_app
from chatq.tasks import scripts
from chatq.tasks.batch import BatchClient, BatchInvalid, BatchNotFound, ConversationResult
from chatq.tasks.errors import WaitTimeout
from chatq.testing.server import ERRORS, complete, echo_reply

from .conftest import ROOT
from .test_api import KEY_A, api_settings, http, serve

RESULT_KEYS = {"custom_id", "session_id", "status", "replies", "usage", "error", "job_ids"}
OPENAI_KEYS = {"id", "custom_id", "response", "error"}


def tag() -> str:
    return uuid.uuid4().hex[:8]


def run_cli(fleet, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chatq", *map(str, args)], cwd=ROOT, env=fleet.env,
                          capture_output=True, text=True, timeout=timeout)


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def expected_replies(turns: list[str]) -> list[str | None]:
    """Replies a fresh session gives these turns in order; a faulting turn fails and leaves no history."""
    history: list[dict] = []
    replies: list[str | None] = []
    for text in turns:
        if "[[fault:" in text:
            replies.append(None)
            continue
        history.append({"role": "user", "content": text})
        replies.append(echo_reply(history))
        history.append({"role": "assistant", "content": replies[-1]})
    return replies


def namespace_keys(client) -> set[str]:
    """The namespace's data keys and its listing; not the fleet's bookkeeping (pending marks the
    sweeper drops, the sweep lock, idle runner threads)."""
    fleet = client.keys.sessions.removesuffix("sessions")
    return {k for k in client.r.scan_iter(f"{client.keys.ns}:*", count=1000)
            if not k.startswith(fleet) or k == client.keys.sessions}


def openai_line(custom_id: str, *users: str, system: str | None = None) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": u} for u in users]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 100}}


@pytest.fixture
def batches(client) -> BatchClient:
    return BatchClient(client)


def test_native_conversations_run_in_order_each_in_its_own_session(batches, client):
    t = tag()
    named = f"named-{t}"
    convs = {f"c{i}-{t}": [f"conversation {i} turn {n} {t}" for n in range(i + 1)] for i in range(6)}
    lines = [{"custom_id": cid, "messages": turns} for cid, turns in convs.items()]
    lines[2]["session_id"] = named
    lines.append({"custom_id": f"single-{t}", "message": f"just one {t}"})
    convs[f"single-{t}"] = [f"just one {t}"]

    info = batches.submit(lines)
    assert (info.total, info.turns) == (7, 22) and not info.skipped and not info.warnings
    status = batches.wait(info.batch_id, timeout=60)
    assert status.done and status.finished_at and (status.total, status.succeeded) == (7, 7)
    assert (status.turns.total, status.turns.succeeded) == (22, 22)

    results = batches.results(info.batch_id)
    assert [r.custom_id for r in results] == list(convs)
    assert results[2].session_id == named
    assert len({r.session_id for r in results}) == 7
    for r in results:
        assert r.status == "succeeded" and r.error is None, r
        assert r.replies == expected_replies(convs[r.custom_id])
        assert r.usage.total_tokens > 0
        history = client.get_session(r.session_id).messages
        assert [m.content for m in history if m.role == "user"] == convs[r.custom_id]
    assert all(j.batch_id == info.batch_id for j in client.jobs.get_many(results[5].job_ids))
    for key in (batches.store.key(info.batch_id), batches.store.conversations_key(info.batch_id)):
        assert 0 < client.r.ttl(key) <= client.settings.result_ttl


def test_openai_batch_lines_run_as_at_openai(batches, client, tmp_path, fleet, fake_openai):
    """System prompts, few-shot user/assistant pairs and tool-call transcripts seed the line's session;
    the last user message is its one completion; the output is OpenAI's Batch output format."""
    t = tag()
    few_shot = [{"role": "system", "content": "[[persona:Pirate]] You translate."},
                {"role": "user", "content": "cat"}, {"role": "assistant", "content": "chat"},
                {"role": "user", "content": f"dog {t}"}]
    tools = [{"role": "user", "content": "2+3?"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":3}'}}]},
             {"role": "tool", "tool_call_id": "c1", "content": "5"},
             {"role": "assistant", "content": "5"},
             {"role": "developer", "content": "Be terse."},
             {"role": "user", "content": f"and 3+4? {t}"}]
    lines = [{**openai_line(f"fs-{t}"), "body": {"model": "gpt-4o", "messages": few_shot, "temperature": 0,
                                                 "max_completion_tokens": 50, "seed": 7}},
             {**openai_line(f"tl-{t}"), "body": {"model": "gpt-4o-mini", "messages": tools}},
             openai_line(f"two-{t}", f"first {t}", f"second {t}"),
             openai_line(f"bad-{t}", f"[[fault:400]] {t}")]
    info = batches.submit(lines)
    assert (info.total, info.turns, info.output_format) == (4, 4, "openai"), "one completion per line"
    batches.wait(info.batch_id, timeout=60)
    out = {line.custom_id: line.model_dump(mode="json") for line in batches.iter_output(info.batch_id)}
    assert list(out) == [f"fs-{t}", f"tl-{t}", f"two-{t}", f"bad-{t}"]
    sent = {f"fs-{t}": few_shot, f"tl-{t}": tools,
            f"two-{t}": [{"role": "user", "content": f"first {t}"}, {"role": "user", "content": f"second {t}"}]}
    for custom_id, messages in sent.items():
        line = out[custom_id]
        assert line["error"] is None and line["response"]["status_code"] == 200 and line["id"].startswith("batch_req_")
        body = ChatCompletion.model_validate(line["response"]["body"])
        assert body.choices[0].message.content == complete({"model": "m", "messages": messages})["choices"][0][
            "message"]["content"], "the provider saw the line's whole conversation, and nothing else"
        assert body.usage.total_tokens > 0
    assert out[f"fs-{t}"]["response"]["body"]["choices"][0]["message"]["content"].startswith("Pirate: "), \
        "the line's system prompt replaced the agent's"
    assert out[f"bad-{t}"]["error"] is None and out[f"bad-{t}"]["response"]["status_code"] == 400, \
        "the provider's error is the response the line got, as at OpenAI"
    request = fake_openai.recorded(f"dog {t}")[-1]
    assert (request["model"], request["temperature"], request["max_completion_tokens"], request["seed"]) == \
        ("gpt-4o", 0, 50, 7), "the body's parameters reach the provider, as at OpenAI"
    assert out[f"fs-{t}"]["response"]["body"]["model"].endswith("gpt-4o"), "the model the provider says answered"
    session = client.get_session(batches.results(info.batch_id)[0].session_id)
    assert session.system_prompt == "[[persona:Pirate]] You translate." and len(session.messages) == 4
    native = list(batches.iter_output(info.batch_id, "chatq"))
    assert native[2].replies == [out[f"two-{t}"]["response"]["body"]["choices"][0]["message"]["content"]]
    cli = run_cli(fleet, "batch", "results", info.batch_id, "--format", "chatq")
    assert cli.returncode == 0 and json.loads(cli.stdout.splitlines()[0])["custom_id"] == f"fs-{t}"


def test_openai_lines_are_seeded_after_redis_lost_the_seed_script(batches, client):
    """After a Redis restart (or ``SCRIPT FLUSH``) the traffic so far has loaded ``submit`` but not ``seed``: a
    batch's seeds, sent again after its jobs by the pipeline's NOSCRIPT retry, were refused as sessions with
    work, and the lines ran with neither their system prompt nor their earlier messages."""
    t = tag()
    lines = [openai_line(f"s{i}-{t}", f"earlier {i} {t}", f"now {i} {t}", system=f"[[persona:P{i}]] Hi.")
             for i in range(3)]
    client.r.script_flush()
    client.r.script_load(scripts.source("submit"))
    assert client.r.script_exists(scripts.load(client.r, "seed").sha) == [False]
    info = batches.submit(lines)
    batches.wait(info.batch_id, timeout=60)
    for line, result in zip(lines, batches.results(info.batch_id)):
        messages = line["body"]["messages"]
        session = client.get_session(result.session_id)
        assert session.system_prompt == messages[0]["content"]
        assert [m.content for m in session.messages[:2]] == [m["content"] for m in messages[1:]]
        assert result.replies == [complete({"model": "m", "messages": messages})["choices"][0]["message"]["content"]]


def test_failed_openai_lines_carry_openais_shapes(batches, client, fleet):
    """A request the provider answered with an HTTP error is that response (its status and error body);
    one that got no response, because chatq failed it, has ``error: {code, message}`` and no response."""
    t = tag()
    answered = {f"nf-{t}": (404, 404), f"quota-{t}": (429, "quota"), f"bad-{t}": (400, 400)}
    lines = [openai_line(f"nf-{t}", f"[[fault:404]] {t}"), openai_line(f"quota-{t}", f"[[fault:quota]] {t}"),
             openai_line(f"bad-{t}", f"[[fault:400]] {t}"),
             {**openai_line(f"json-{t}"), "body": {"messages": [{"role": "user", "content": f"[[schema:break]] {t}"}],
                                                  "response_format": {"type": "json_object"}}},
             openai_line(f"ok-{t}", f"fine {t}")]
    info = batches.submit(lines)
    assert batches.wait(info.batch_id, timeout=60).failed == 4
    native = batches.results(info.batch_id)
    jobs = {r.custom_id: client.get(r.job_ids[-1]) for r in native}
    out = [line.model_dump(mode="json") for line in batches.iter_output(info.batch_id)]
    assert [line["custom_id"] for line in out] == [line["custom_id"] for line in lines]
    by_id = {line["custom_id"]: line for line in out}

    for custom_id, (status, kind) in answered.items():
        job = jobs[custom_id]
        message, type_, code = ERRORS[kind]
        assert by_id[custom_id] == {
            "id": f"batch_req_{job.job_id}", "custom_id": custom_id, "error": None,
            "response": {"status_code": status, "request_id": job.job_id, "body": {"error": {
                "message": message, "type": type_, "param": None, "code": code}}}}
        ErrorObject.model_validate(by_id[custom_id]["response"]["body"]["error"])
        assert job.error.provider_response.status_code == status, "the job's record keeps what the provider said"
    json_job = jobs[f"json-{t}"]
    assert json_job.error.type == "StructuredOutputInvalid"
    assert json_job.error.message.startswith("the reply is not valid JSON: ")
    assert by_id[f"json-{t}"] == {"id": f"batch_req_{json_job.job_id}", "custom_id": f"json-{t}", "response": None,
                                  "error": {"code": "StructuredOutputInvalid", "message": json_job.error.message}}
    ok = by_id[f"ok-{t}"]
    assert ok["error"] is None and ok["response"]["status_code"] == 200
    assert ChatCompletion.model_validate(ok["response"]["body"]).choices[0].message.content == native[4].replies[0]

    assert [(r.status, r.error and r.error.type) for r in native[:3]] == \
        [("failed", "ProviderHTTP404"), ("failed", "InsufficientQuota"), ("failed", "ProviderHTTP400")], \
        "chatq's own format keeps chatq's error types"
    cli = run_cli(fleet, "batch", "results", info.batch_id)
    assert cli.returncode == 0, cli.stderr
    assert [json.loads(x) for x in cli.stdout.splitlines()] == out


def check_openai_output(rows: list[dict], expected: dict[str, list[dict]], native: list[dict]) -> None:
    """OpenAI Batch output lines, in input order: each a 200 response whose body is a ``chat.completion``
    with the reply the line's messages call for, and the IDs of the line's job (from chatq's format)."""
    assert [r["custom_id"] for r in rows] == list(expected) == [n["custom_id"] for n in native]
    for row, messages, conv in zip(rows, expected.values(), native):
        job_id = conv["job_ids"][-1]
        assert set(row) == OPENAI_KEYS and set(row["response"]) == {"status_code", "request_id", "body"}, row
        assert (row["id"], row["error"], row["response"]["status_code"], row["response"]["request_id"]) == \
            (f"batch_req_{job_id}", None, 200, job_id)
        body = ChatCompletion.model_validate(row["response"]["body"])
        assert body.object == "chat.completion" and body.usage.total_tokens > 0
        assert body.choices[0].message.content == complete({"model": "m", "messages": messages})["choices"][0][
            "message"]["content"] == conv["replies"][0]


def check_chatq_output(rows: list[dict], expected: dict[str, list[dict]]) -> None:
    assert [r["custom_id"] for r in rows] == list(expected)
    for row, messages in zip(rows, expected.values()):
        assert set(row) == RESULT_KEYS and row["status"] == "succeeded" and row["error"] is None, row
        assert row["replies"] == [complete({"model": "m", "messages": messages})["choices"][0]["message"]["content"]]
        assert len(row["job_ids"]) == 1
        ConversationResult.model_validate(row)


def openai_file_lines(t: str) -> tuple[list[dict], dict[str, list[dict]]]:
    """OpenAI request lines (a system prompt with few-shot pairs, parameters, a plain question) and the
    messages each sends the provider."""
    few_shot = [{"role": "system", "content": "You translate."}, {"role": "user", "content": "cat"},
                {"role": "assistant", "content": "chat"}, {"role": "user", "content": f"dog {t}"}]
    lines = [{**openai_line(f"fs-{t}"), "body": {"model": "gpt-4o", "messages": few_shot, "temperature": 0}},
             openai_line(f"one-{t}", f"hello {t}"),
             openai_line(f"sys-{t}", f"who are you {t}", system="[[persona:Bot]] Be brief.")]
    expected = {f"fs-{t}": few_shot, f"one-{t}": [{"role": "user", "content": f"hello {t}"}],
                f"sys-{t}": lines[2]["body"]["messages"]}
    return lines, expected


def test_openai_output_through_the_cli(fleet, tmp_path):
    t = tag()
    lines, expected = openai_file_lines(t)
    path = write_jsonl(tmp_path / "openai.jsonl", lines)
    out_path = tmp_path / "out.jsonl"
    run = run_cli(fleet, "batch", "run", path, "-o", out_path)
    assert run.returncode == 0, run.stderr
    batch_id = json.loads(run.stdout)["batch_id"]
    chatq_rows = [json.loads(x) for x in run_cli(fleet, "batch", "results", batch_id, "--format", "chatq")
                  .stdout.splitlines()]
    check_chatq_output(chatq_rows, expected)
    rows = [json.loads(x) for x in out_path.read_text().splitlines()]
    check_openai_output(rows, expected, chatq_rows)
    for argv in ([], ["--format", "openai"]):
        again = run_cli(fleet, "batch", "results", batch_id, *argv)
        assert again.returncode == 0 and [json.loads(x) for x in again.stdout.splitlines()] == rows, argv

    explicit = run_cli(fleet, "batch", "run", path, "-o", tmp_path / "openai-out.jsonl", "--format", "openai")
    native = run_cli(fleet, "batch", "run", path, "-o", tmp_path / "chatq-out.jsonl", "--format", "chatq")
    assert explicit.returncode == native.returncode == 0, explicit.stderr + native.stderr
    native_rows = [json.loads(x) for x in (tmp_path / "chatq-out.jsonl").read_text().splitlines()]
    check_chatq_output(native_rows, expected)
    explicit_id = json.loads(explicit.stdout)["batch_id"]
    check_openai_output([json.loads(x) for x in (tmp_path / "openai-out.jsonl").read_text().splitlines()], expected,
                        [json.loads(x) for x in run_cli(fleet, "batch", "results", explicit_id, "--format", "chatq")
                         .stdout.splitlines()])


def test_openai_output_over_http(fleet):
    t = tag()
    lines, expected = openai_file_lines(t)
    body = "".join(json.dumps(line) + "\n" for line in lines)
    with serve(create_app(api_settings(), fleet.settings)) as url, http(url, KEY_A) as c:
        r = c.post("/v1/batches", content=body, headers={"Content-Type": "application/x-ndjson"})
        assert r.status_code == 202 and r.json()["output_format"] == "openai", r.text
        batch_id = r.json()["batch_id"]
        deadline = time.monotonic() + 60
        while not (status := c.get(r.headers["Location"]).json())["done"]:
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status["succeeded"] == 3, status

        def results(**params) -> list[dict]:
            resp = c.get(f"/v1/batches/{batch_id}/results", params=params)
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/x-ndjson")
            return [json.loads(x) for x in resp.text.splitlines()]

        native = results(format="chatq")
        check_chatq_output(native, expected)
        default = results()
        check_openai_output(default, expected, native)
        assert results(format="openai") == default


@pytest.mark.parametrize("line,fragment", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ({"messages": ["hi"]}, "custom_id: Field required"),
    ({"custom_id": 7, "message": "hi"}, "custom_id: Input should be a valid string"),
    ({"custom_id": "x", "message": "a", "messages": ["b"]}, "either 'messages'"),
    ({"custom_id": "x", "messages": []}, "messages"),
    ({"custom_id": "x", "mesages": ["typo"]}, "mesages: Extra inputs are not permitted"),
    ({"custom_id": "x", "messages": ["ok", "  "]}, "turn 2: message is empty"),
    ({"custom_id": "x", "message": "y" * 40_000}, "the limit is"),
    ({"custom_id": "x", "message": "hi", "session_id": "bad id!"}, "malformed session ID"),
    ({"custom_id": "x", "message": "hi", "agent": "nobody"}, "unknown agent"),
    ({"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {"messages": [{"role": "user", "content": "a"}]}},
     "url:"),
    ({**openai_line("x", "a"), "body": {"messages": [{"role": "system", "content": "only system"}]}}, "no user message"),
    ({**openai_line("x", "a"), "body": {"messages": [{"role": "user", "content": "a"},
                                                     {"role": "assistant", "content": "b"}]}},
     "follows the last user message"),
    ({**openai_line("x", "a"), "body": {"messages": [{"role": "tool", "tool_call_id": "t", "content": "5"},
                                                     {"role": "user", "content": "a"}]}},
     "must be a response to a preceding"),
    ({**openai_line("x", "a"), "body": {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}},
     "image_url: Field required"),
    ({**openai_line("x", "a"), "body": {"messages": [{"role": "user", "content": "a"}], "n": 2}},
     "params.n is a chat-completions parameter chatq does not take"),
    ({**openai_line("x", "a"), "body": {"messages": [{"role": "user", "content": "a"}], "temperature": 9}},
     "params.temperature is 9"),
])
def test_each_kind_of_invalid_line_is_named(batches, line, fragment):
    with pytest.raises(BatchInvalid) as exc:
        batches.submit([{"custom_id": "fine", "message": "ok"}, line])
    (error,) = exc.value.errors
    assert error.line == 2 and fragment in error.error, error


def test_invalid_lines_are_listed_by_number_and_nothing_is_written(fleet, client, tmp_path):
    t = tag()
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"custom_id": f"a-{t}", "message": "fine"},
        "{broken",
        "",
        {"custom_id": f"a-{t}", "message": "same id again"},
        {"custom_id": f"s1-{t}", "message": "hi", "session_id": f"shared-{t}"},
        {"custom_id": f"s2-{t}", "message": "hi", "session_id": f"shared-{t}"},
        {"custom_id": f"b-{t}", "messages": ["fine", ""]},
    ])
    before = namespace_keys(client)
    out = run_cli(fleet, "batch", "submit", path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: 4 invalid line(s); nothing was submitted")
    assert "line 2: not valid JSON" in out.stderr
    assert "line 4: duplicate custom_id" in out.stderr and "(first on line 1)" in out.stderr
    assert f"line 6: session 'shared-{t}' is also used on line 5" in out.stderr
    assert "line 7: turn 2: message is empty" in out.stderr
    assert namespace_keys(client) == before

    out = run_cli(fleet, "batch", "submit", path, "--skip-invalid")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert [e["line"] for e in info["skipped"]] == [2, 4, 6, 7] and info["total"] == 2
    assert "skipped 4 invalid line(s): 2, 4, 6, 7" in out.stderr
    batches = BatchClient(client)
    batches.wait(info["batch_id"], timeout=60)
    assert [(r.custom_id, r.status) for r in batches.results(info["batch_id"])] == \
        [(f"a-{t}", "succeeded"), (f"s1-{t}", "succeeded")]


def test_failed_turn_fails_its_conversation_only_and_later_turns_still_run(batches, client):
    t = tag()
    broken = [f"one {t}", f"[[fault:400]] two {t}", f"three {t}"]
    fine = [f"alpha {t}", f"beta {t}"]
    info = batches.submit([{"custom_id": "broken", "messages": broken}, {"custom_id": "fine", "messages": fine}])
    status = batches.wait(info.batch_id, timeout=60)
    assert (status.succeeded, status.failed) == (1, 1)
    assert (status.turns.succeeded, status.turns.failed) == (4, 1)
    bad, good = batches.results(info.batch_id)
    assert bad.status == "failed" and bad.replies == expected_replies(broken) and bad.replies[1] is None
    assert bad.error.turn == 2 and bad.error.type == "ProviderHTTP400" and "Invalid request" in bad.error.message
    assert bad.usage.total_tokens > 0
    assert good.status == "succeeded" and good.replies == expected_replies(fine) and good.error is None


def test_cancel_cancels_the_queued_tail_of_every_conversation(fleet, batches, client):
    t = tag()
    convs = {f"x{i}": [f"[[stall:4]] first {i} {t}", f"second {i} {t}", f"third {i} {t}"] for i in range(3)}
    info = batches.submit([{"custom_id": c, "messages": m} for c, m in convs.items()])
    deadline = time.monotonic() + 20
    while batches.status(info.batch_id).turns.running < 3:
        assert time.monotonic() < deadline, "first turns never started"
        time.sleep(0.05)
    with pytest.raises(WaitTimeout):
        batches.wait(info.batch_id, timeout=0.2)

    out = run_cli(fleet, "batch", "cancel", info.batch_id)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["cancelled"] == 6
    status = batches.wait(info.batch_id, timeout=30)
    assert (status.cancelled, status.turns.succeeded, status.turns.cancelled) == (3, 3, 6)
    for r in batches.results(info.batch_id):
        first = convs[r.custom_id][0]
        assert r.status == "cancelled" and r.replies == [*expected_replies([first]), None, None]
        assert r.error.turn == 2 and r.error.type == "Cancelled"
        assert [m.content for m in client.get_session(r.session_id).messages if m.role == "user"] == [first]
    assert batches.cancel(info.batch_id).cancelled == 0


def test_batch_survives_a_killed_worker(make_fleet):
    fleet = make_fleet()
    first = fleet.start_worker(4)
    client = fleet.client()
    batches = BatchClient(client)
    t = tag()
    convs = {f"k{i}": [f"[[stall:0.3]] k{i} turn {n} {t}" for n in range(3)] for i in range(12)}
    info = batches.submit([{"custom_id": c, "messages": m} for c, m in convs.items()])
    deadline = time.monotonic() + 30
    while (status := batches.status(info.batch_id)).turns.succeeded < 4 or not status.turns.running:
        assert time.monotonic() < deadline, fleet.logs()
        time.sleep(0.02)
    fleet.kill(first)
    assert not batches.status(info.batch_id).done
    fleet.start_worker(8)
    status = batches.wait(info.batch_id, timeout=60)
    assert status.succeeded == 12, fleet.logs()
    results = batches.results(info.batch_id)
    for r in results:
        assert r.status == "succeeded" and r.replies == expected_replies(convs[r.custom_id])
    jobs = client.jobs.get_many([j for r in results for j in r.job_ids])
    assert any(j.attempts == 2 for j in jobs), "the kill interrupted no turn"


def test_batch_run_end_to_end_and_results_file_shape(fleet, client, tmp_path):
    t = tag()
    convs = {f"r{i}-{t}": [f"run {i} turn {n} {t}" for n in range(2)] for i in range(5)}
    lines = [{"custom_id": c, "messages": m} for c, m in convs.items()]
    lines.append(openai_line(f"oa-{t}", f"openai {t}"))
    convs[f"oa-{t}"] = [f"openai {t}"]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    out_path = tmp_path / "out.jsonl"

    out = run_cli(fleet, "batch", "run", path, "-o", out_path)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["done"] and status["total"] == status["succeeded"] == 6 and status["turns"]["total"] == 11
    assert "wrote 6 result(s)" in out.stderr and "ETA" in out.stderr

    rows = [json.loads(x) for x in out_path.read_text().splitlines()]
    assert [r["custom_id"] for r in rows] == list(convs)
    for row in rows:
        assert set(row) == RESULT_KEYS
        assert row["replies"] == expected_replies(convs[row["custom_id"]]) and row["error"] is None
        assert row["usage"]["total_tokens"] > 0 and len(row["job_ids"]) == len(convs[row["custom_id"]])
        ConversationResult.model_validate(row)

    again = run_cli(fleet, "batch", "results", status["batch_id"])
    assert again.returncode == 0 and [json.loads(x) for x in again.stdout.splitlines()] == rows
    counts = json.loads(run_cli(fleet, "batch", "status", status["batch_id"]).stdout)
    assert {k: counts[k] for k in ("total", "queued", "running", "succeeded", "failed", "cancelled")} == \
        {"total": 6, "queued": 0, "running": 0, "succeeded": 6, "failed": 0, "cancelled": 0}


def test_unknown_batch_is_a_clear_error(fleet, batches):
    for op in (batches.status, batches.results, batches.cancel):
        with pytest.raises(BatchNotFound):
            op("0" * 32)
    out = run_cli(fleet, "batch", "status", "0" * 32)
    assert out.returncode == 1 and out.stderr == f"error: unknown or expired batch: {'0' * 32}\n"


def test_empty_input_is_refused(batches):
    with pytest.raises(ValueError, match="empty"):
        batches.submit(["", "  "])
    with pytest.raises(ValueError, match="no valid conversations"):
        batches.submit(["{bad"], skip_invalid=True)
