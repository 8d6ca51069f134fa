"""A deterministic stand-in for a chat-completions model, so demos and tests need no network.

Every reply is a pure function of the request: echoes carry a hash of the whole prior history
(so a lost, duplicated or reordered turn shows up in later replies), and directives embedded in
user text (``[[tool:NAME {args}]]``, ``[[tool-loop:...]]``, ``my name is X``) exercise tool calls
and memory. It knows nothing of tests: ``chatq.testing.server`` serves the same logic over HTTP
and keeps its own fault directives out of the echoes through the ``clean`` hook.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any

from .tokens import estimate_tokens, text_of

OFFLINE_MODEL = "chatq-offline-echo"

TOOL_DIRECTIVE = re.compile(r"\[\[tool(-loop)?:([A-Za-z0-9_.-]+)\s*(\{.*?\})?\]\]", re.S)
PERSONA = re.compile(r"\[\[persona:(.*?)\]\]", re.S)
MY_NAME_IS = re.compile(r"\bmy name is ([A-Za-z][\w-]*)", re.I)
WHATS_MY_NAME = re.compile(r"\bwhat(?:'s|’s|s|\s+is)\s+my\s+name\b", re.I)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def collapse(text: str) -> str:
    """Whitespace runs to one space: how the echo quotes the user's text."""
    return " ".join(text.split())


def history_hash(messages: list[dict[str, Any]]) -> str:
    """8-hex digest of the non-system ``[role, content]`` pairs: the ``h=`` of an echo reply."""
    pairs = [[m.get("role"), m.get("content")] for m in messages if m.get("role") != "system"]
    return _sha(_canonical(pairs))[:8]


def echo_reply(messages: list[dict[str, Any]], clean: Callable[[str], str] = collapse) -> str:
    """The echo for a request whose last message is the user's (without any persona prefix)."""
    n = sum(1 for m in messages if m.get("role") == "user")
    text = clean(text_of(messages[-1].get("content")))
    return f"echo #{n}: {text} | h={history_hash(messages[:-1])}"


def _last_user_index(messages: list[dict[str, Any]]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return None


def _tool_calls(messages: list[dict[str, Any]], user_idx: int, loop_only: bool) -> list[dict[str, Any]]:
    content = text_of(messages[user_idx].get("content"))
    users = sum(1 for m in messages if m.get("role") == "user")
    rounds = sum(1 for m in messages[user_idx + 1:] if m.get("role") == "assistant" and m.get("tool_calls"))
    calls = []
    for index, match in enumerate(TOOL_DIRECTIVE.finditer(content)):
        loop, name, args = match.groups()
        if loop_only and not loop:
            continue
        seed = f"{index}:{content}:{users}" + (f":{rounds}" if rounds else "")
        calls.append({
            "id": "call_" + _sha(seed)[:16],
            "type": "function",
            "function": {"name": name, "arguments": args or "{}"},
        })
    return calls


def _tool_results(messages: list[dict[str, Any]]) -> str:
    start = len(messages)
    while start > 0 and messages[start - 1].get("role") == "tool":
        start -= 1
    results = {m.get("tool_call_id"): text_of(m.get("content")) for m in messages[start:]}
    calls = (messages[start - 1].get("tool_calls") or []) if start > 0 else []
    parts = []
    for call in calls:
        if call.get("id") in results:
            parts.append(f"{call.get('function', {}).get('name')}={results.pop(call['id'])}")
    parts += [f"unknown={content}" for content in results.values()]
    return "Tool results: " + "; ".join(parts)


def _answer(messages: list[dict[str, Any]], clean: Callable[[str], str]) -> tuple[str | None, list[dict[str, Any]]]:
    last = messages[-1]
    user_idx = _last_user_index(messages)
    if last.get("role") == "tool":
        if user_idx is not None and (calls := _tool_calls(messages, user_idx, loop_only=True)):
            return None, calls
        return _tool_results(messages), []
    if last.get("role") != "user":
        return echo_reply(messages, clean), []
    if calls := _tool_calls(messages, len(messages) - 1, loop_only=False):
        return None, calls
    text = text_of(last.get("content"))
    if m := MY_NAME_IS.search(text):
        return f"Nice to meet you, {m.group(1)}.", []
    if WHATS_MY_NAME.search(text):
        for earlier in reversed(messages[:-1]):
            if earlier.get("role") == "user" and (m := MY_NAME_IS.search(text_of(earlier.get("content")))):
                return f"Your name is {m.group(1)}.", []
        return "I don't know your name.", []
    return echo_reply(messages, clean), []


def reply_model(requested: str | None) -> str:
    """The ``model`` reported in replies: always visibly offline."""
    if not requested:
        return OFFLINE_MODEL
    return requested if requested.startswith("chatq-offline") else f"chatq-offline:{requested}"


def complete(request: dict[str, Any], clean: Callable[[str], str] = collapse) -> dict[str, Any]:
    """Answer a chat-completions request body with a ``ChatCompletion`` JSON body.

    ``clean`` turns the user's text into the text an echo quotes (whitespace collapsed by default).
    """
    messages: list[dict[str, Any]] = list(request.get("messages") or [])
    if not messages:
        raise ValueError("messages must be a non-empty list")
    content, calls = _answer(messages, clean)
    if content is not None and messages[0].get("role") == "system":
        if persona := PERSONA.search(text_of(messages[0].get("content"))):
            content = f"{persona.group(1)}: {content}"
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    tools = request.get("tools")
    prompt = sum(estimate_tokens(m) for m in messages)
    if tools:
        prompt += math.ceil(len(json.dumps(tools, default=str)) / 4)
    completion = max(1, math.ceil(len(content if content is not None else json.dumps(calls)) / 4))
    return {
        "id": "chatcmpl-" + _sha(_canonical(messages))[:24],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": reply_model(request.get("model")),
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": "tool_calls" if calls else "stop",
            "logprobs": None,
        }],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }
