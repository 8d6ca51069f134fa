"""The offline model's reply rules: deterministic, history-sensitive, and valid ChatCompletions."""

from __future__ import annotations

import json
import math

from openai.types.chat import ChatCompletion

from chatq.worker.offline_model import OFFLINE_MODEL, complete, echo_reply, history_hash
from chatq.worker.tokens import estimate_tokens


def ask(messages: list[dict], **extra) -> ChatCompletion:
    return ChatCompletion.model_validate(complete({"model": "gpt-test", "messages": messages, **extra}))


def user(text) -> dict:
    return {"role": "user", "content": text}


def test_echo_is_a_valid_chat_completion_tied_to_history():
    r = ask([user("hello  there\n")])
    assert r.object == "chat.completion"
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == f"echo #1: hello there | h={history_hash([])}"
    assert r.id.startswith("chatcmpl-") and len(r.id) == len("chatcmpl-") + 24
    assert r.id == ask([user("hello  there\n")]).id
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0


def test_echo_changes_when_history_is_lost_duplicated_or_reordered():
    a, b = user("a"), {"role": "assistant", "content": "x"}
    turns = [[a, b, user("b"), b], [a, b], [a, b, a, b, user("b"), b], [user("b"), b, a, b]]
    replies = {ask([*t, user("next")]).choices[0].message.content for t in turns}
    assert len(replies) == len(turns)


def test_echo_ignores_system_prompt_and_knows_no_test_directives():
    msgs = [user("one"), {"role": "assistant", "content": "r"}, user("two  [[fault:429 n=2]] [[drop]]")]
    reply = ask([{"role": "system", "content": "be nice"}, *msgs]).choices[0].message.content
    assert reply == f"echo #2: two [[fault:429 n=2]] [[drop]] | h={history_hash(msgs[:2])}" == echo_reply(msgs)
    assert history_hash([{"role": "system", "content": "x"}, *msgs[:2]]) == history_hash(msgs[:2])


def test_content_parts_are_joined():
    parts = [{"type": "text", "text": "hi "}, {"type": "text", "text": "you"}]
    assert ask([user(parts)]).choices[0].message.content.startswith("echo #1: hi you | h=")


def test_model_name_is_marked_offline():
    assert complete({"messages": [user("x")]})["model"] == OFFLINE_MODEL
    assert complete({"model": "gpt-4o", "messages": [user("x")]})["model"] == "chatq-offline:gpt-4o"
    assert complete({"model": "chatq-offline-x", "messages": [user("x")]})["model"] == "chatq-offline-x"


def test_remembers_a_name_from_earlier_turns_only():
    hi = ask([user("Hi, my name is Ada-Lovelace!")]).choices[0].message.content
    assert hi == "Nice to meet you, Ada-Lovelace."
    history = [user("my name is Bob"), {"role": "assistant", "content": "ok"},
               user("My name is Ada"), {"role": "assistant", "content": "ok"}]
    for question in ("What's my name?", "whats my name", "what is my name"):
        assert ask([*history, user(question)]).choices[0].message.content == "Your name is Ada."
    assert ask([user("what is my name?")]).choices[0].message.content == "I don't know your name."


def test_tool_directives_become_tool_calls_with_raw_arguments():
    text = 'go [[tool:get_weather {"city": {"name": "Oslo"}}]] and [[tool:nope.x {not json}]] [[tool:clock]]'
    r = ask([user(text)], tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content is None
    assert [(c.function.name, c.function.arguments) for c in msg.tool_calls] == [
        ("get_weather", '{"city": {"name": "Oslo"}}'), ("nope.x", "{not json}"), ("clock", "{}")]
    ids = [c.id for c in msg.tool_calls]
    assert len(set(ids)) == 3 and all(i.startswith("call_") and len(i) == 21 for i in ids)
    assert ids == [c.id for c in ask([user(text)]).choices[0].message.tool_calls]
    later = ask([user("x"), {"role": "assistant", "content": "y"}, user(text)]).choices[0].message.tool_calls
    assert ids[0] != later[0].id


def round_trip(text: str) -> list[dict]:
    """The request after the tools answered each call of ``text`` with ``result-<name>``."""
    msgs = [user(text)]
    reply = complete({"messages": msgs})["choices"][0]["message"]
    msgs.append(reply)
    msgs += [{"role": "tool", "tool_call_id": c["id"], "content": f"result-{c['function']['name']}"}
             for c in reversed(reply["tool_calls"])]
    return msgs


def test_tool_results_are_reported_in_call_order():
    r = ask(round_trip("[[tool:a]] [[tool:b {}]]"))
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == "Tool results: a=result-a; b=result-b"


def test_tool_loop_asks_again_with_fresh_ids():
    msgs = round_trip("[[tool-loop:spin {}]]")
    first_id = msgs[1]["tool_calls"][0]["id"]
    again = complete({"messages": msgs})["choices"][0]
    assert again["finish_reason"] == "tool_calls"
    assert again["message"]["tool_calls"][0]["function"]["name"] == "spin"
    second_id = again["message"]["tool_calls"][0]["id"]
    msgs += [again["message"], {"role": "tool", "tool_call_id": second_id, "content": "r"}]
    third_id = complete({"messages": msgs})["choices"][0]["message"]["tool_calls"][0]["id"]
    assert len({first_id, second_id, third_id}) == 3


def test_persona_prefixes_content_replies():
    system = {"role": "system", "content": "You are terse. [[persona:Pirate]]"}
    assert ask([system, user("my name is Jo")]).choices[0].message.content == "Pirate: Nice to meet you, Jo."
    assert ask([system, *round_trip("[[tool:t]]")]).choices[0].message.content == "Pirate: Tool results: t=result-t"


def test_token_estimates():
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert estimate_tokens({"role": "user", "content": "abcde"}) == 4 + 2
    assert estimate_tokens({"role": "assistant", "content": None}) == 4
    assert estimate_tokens({"role": "assistant", "content": None, "tool_calls": calls}) == (
        4 + math.ceil(len(json.dumps(calls)) / 4))
    tools = [{"type": "function", "function": {"name": "f"}}]
    msgs = [{"role": "system", "content": "s"}, user("hello")]
    usage = complete({"messages": msgs, "tools": tools})["usage"]
    assert usage["prompt_tokens"] == sum(map(estimate_tokens, msgs)) + math.ceil(len(json.dumps(tools)) / 4)
