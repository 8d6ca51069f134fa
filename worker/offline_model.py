"""A deterministic stand-in for a chat-completions model, so demos and tests need no network.

Every reply is a pure function of the request: echoes carry a hash of the whole prior history
(so a lost, duplicated or reordered turn shows up in later replies), and directives embedded in
user text (``[[tool:NAME {args}]]``, ``[[tool-loop:...]]``, ``my name is X``) exercise tool calls
and memory. Content parts are read as a blind model would: text as text, an image, audio or file
described by what it is (``[image https://...]``, ``[image image/png 68 bytes]``). A
``response_format`` asking for JSON is honoured: a JSON schema gets its smallest instance (required
properties only, the first enum value, minimum lengths and bounds), with the reply's text in its
first string; ``json_object`` gets ``{"reply": text}``. It knows nothing of tests: ``chatq.testing.server`` serves the same logic over HTTP
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


def describe(content: Any) -> str:
    """A message's content as this model reads it: the text, with each part that is not text
    (image, audio, file) described by what it is rather than seen."""
    if not isinstance(content, list):
        return text_of(content)
    return "".join(p.get("text", "") if p.get("type", "text") == "text" else f" {describe_part(p)} "
                   for p in content if isinstance(p, dict))


def describe_part(part: dict[str, Any]) -> str:
    kind = part.get("type")
    if kind == "image_url":
        return f"[image {_source((part.get('image_url') or {}).get('url', ''))}]"
    if kind == "input_audio":
        audio = part.get("input_audio") or {}
        return f"[audio {audio.get('format')} {_decoded_size(audio.get('data', ''))} bytes]"
    if kind == "file":
        file = part.get("file") or {}
        name = file.get("filename") or file.get("file_id") or "file"
        data = file.get("file_data")
        return f"[file {name}" + (f" {_source(data)}]" if data else "]")
    return f"[{kind}]"


def _source(url: str) -> str:
    """A URL as a description quotes it: an address as it is (shortened), inline data by type and size."""
    if url.startswith("data:"):
        head, _, data = url.partition(",")
        return f"{head[5:].split(';')[0]} {_decoded_size(data)} bytes"
    return url if len(url) <= 80 else url[:77] + "..."


def _decoded_size(data: str) -> int:
    return len(data) * 3 // 4 - data.count("=", -2)


def echo_reply(messages: list[dict[str, Any]], clean: Callable[[str], str] = collapse) -> str:
    """The echo for a request whose last message is the user's (without any persona prefix)."""
    n = sum(1 for m in messages if m.get("role") == "user")
    text = clean(describe(messages[-1].get("content")))
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


def resolve(schema: Any, root: dict[str, Any]) -> Any:
    """A schema with its local ``$ref`` (``#/$defs/X``, as pydantic writes nested models) followed."""
    for _ in range(32):
        if not (isinstance(schema, dict) and isinstance(ref := schema.get("$ref"), str) and ref.startswith("#")):
            return schema
        node: Any = root
        for key in filter(None, ref[1:].split("/")):
            node = node.get(key.replace("~1", "/").replace("~0", "~")) if isinstance(node, dict) else None
        schema = node
    return None


def instance_of(schema: Any, text: str = "", root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """The smallest value that fits a simple JSON schema: objects with their required properties,
    strings (``text``, padded or cut to the length bounds), numbers at their lower bound, booleans,
    ``const`` and the first ``enum`` value, arrays of ``minItems`` items, the first of ``anyOf`` /
    ``oneOf``, the properties of every ``allOf`` member, and local ``$ref``s."""
    root = schema if root is None else root
    schema = resolve(schema, root)
    if not isinstance(schema, dict) or depth > 32:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return instance_of(schema[key][0], text, root, depth + 1)
    if schema.get("allOf"):
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in (resolve(p, root) for p in schema["allOf"]):
            if isinstance(part, dict):
                merged["properties"].update(part.get("properties", {}))
                merged["required"] += part.get("required", [])
        return instance_of(merged, text, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if kind == "object":
        props = schema.get("properties") or {}
        out = {}
        for name in schema.get("required") or []:
            out[name] = instance_of(props.get(name, {}), text if not out else name, root, depth + 1)
        return out
    if kind == "array":
        return [instance_of(schema.get("items", {}), text, root, depth + 1) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        value = text or "x"
        value = value[:schema["maxLength"]] if "maxLength" in schema else value
        return value + "x" * max(0, schema.get("minLength", 0) - len(value))
    if kind in ("integer", "number"):
        if "minimum" in schema:
            low = schema["minimum"]
        elif "exclusiveMinimum" in schema:
            low = schema["exclusiveMinimum"] + 1
        else:
            low = min(0, schema.get("maximum", 0), schema.get("exclusiveMaximum", 1) - 1)
        return math.ceil(low) if kind == "integer" else low
    if kind == "boolean":
        return True
    return None


def formatted(content: str, response_format: Any) -> str:
    """The reply's text in the JSON the request's ``response_format`` asks for, if it asks."""
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if schema is not None:
            return json.dumps(instance_of(schema, content))
    if kind in ("json_object", "json_schema"):
        return json.dumps({"reply": content})
    return content


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
    if content is not None:
        content = formatted(content, request.get("response_format"))
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
