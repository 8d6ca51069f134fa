"""A provider's 200 reply: read under one deadline and a size cap, then judged as a chat completion;
streamed, its chunks assembled into the same completion as they arrive (``StreamAssembly``).

Pure checks over the body's chunks and bytes, unit-tested with a fake clock. Each refusal is a
``ReplyError`` whose message names what was wrong, never an ``AttributeError`` three frames later in
the agent.
"""

from __future__ import annotations

import json
import json.scanner
from collections.abc import AsyncIterator, Callable
from typing import Any

from openai.types.chat import ChatCompletion
from pydantic import ValidationError

# The agent acts on these fields; a fault anywhere else (a compatible provider's own
# finish_reason, a float ``created``, a missing ``object``) is tolerated as the SDK tolerates it.
_USAGE_TOKENS = {"prompt_tokens", "completion_tokens", "total_tokens"}
_MESSAGE_READ = {"content", "tool_calls"}


class ReplyError(Exception):
    """A 200 reply chatq will not use. ``type`` and ``retryable`` become the job error's."""

    type = "ProviderBadResponse"
    retryable = True


class BadReply(ReplyError):
    """Not a chat completion: retried like a 5xx, since proxies and overloaded gateways send these."""


class ReplyTooLarge(ReplyError):
    """Over the size limit: not retried, since asking again pays for the same oversized answer."""

    type = "ProviderReplyTooLarge"
    retryable = False


class ReplyTimeout(ReplyError):
    type = "ProviderTimeout"


class ReplyBroken(ReplyError):
    type = "ProviderConnectionError"


class BodyReader:
    """Reads a reply's body under ``deadline`` and ``max_bytes``, counting what arrived, so a call cut
    by the runtime's own deadline (``asyncio.timeout``) can still say how much had come (``late``)."""

    def __init__(self, *, declared: int | None, deadline: float, timeout: float, max_bytes: int,
                 clock: Callable[[], float]):
        self.declared, self.deadline, self.timeout = declared, deadline, timeout
        self.max_bytes, self.clock = max_bytes, clock
        self.size = 0

    async def read(self, chunks: AsyncIterator[bytes]) -> bytes:
        """The whole body, or a ``ReplyError`` the moment it runs past the deadline or the size cap.

        ``chunks`` yields as bytes arrive, so however slowly they trickle in the deadline is checked
        at every one; a read that fails (a dropped connection) is a timeout when the deadline has
        passed and a broken connection otherwise.
        """
        if self.declared is not None and self.declared > self.max_bytes:
            raise ReplyTooLarge(f"the provider's reply is {self.declared} bytes, over the limit of "
                                f"{self.max_bytes} (CHATQ_PROVIDER_MAX_REPLY_BYTES)")
        parts: list[bytes] = []
        while True:
            try:
                chunk = await anext(chunks, None)
            except Exception as exc:  # whatever the transport raises: only the deadline tells them apart
                if self.clock() >= self.deadline:
                    raise self.late() from exc
                raise ReplyBroken(f"the connection to the provider broke while reading its reply: {exc!r}") from exc
            if chunk is None:
                return b"".join(parts)
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise ReplyTooLarge(f"the provider's reply is over the limit of {self.max_bytes} bytes "
                                    "(CHATQ_PROVIDER_MAX_REPLY_BYTES); stopped reading it")
            if self.clock() >= self.deadline:
                raise self.late()
            parts.append(chunk)

    def late(self) -> ReplyTimeout:
        return _late(self.size, self.timeout)


async def read_body(chunks: AsyncIterator[bytes], **limits: Any) -> bytes:
    """``BodyReader(**limits).read(chunks)``: the whole body under one deadline and a size cap."""
    return await BodyReader(**limits).read(chunks)


def _late(size: int, timeout: float) -> ReplyTimeout:
    return ReplyTimeout(f"the provider's reply was not complete within {timeout:g}s "
                        f"(CHATQ_PROVIDER_TIMEOUT, per call): {size} byte{'' if size == 1 else 's'} had arrived")


def parse_completion(body: bytes, content_type: str = "") -> ChatCompletion:
    """The body as a ``ChatCompletion`` validated by the SDK's own type, or a ``BadReply``.

    Pydantic's strict validation (about 10 µs) replaces the SDK's lenient ``construct`` (about
    180 µs, and it turns garbage into a model whose fields are missing or strings).
    """
    try:
        return _with_choices(ChatCompletion.model_validate_json(body))
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
    what = f"{content_type.split(';')[0].strip() or 'no content type'}, {len(body)} bytes"
    if errors[0]["type"] == "json_invalid":
        raise BadReply(f"the provider's 200 reply is not JSON ({what}): {_excerpt(body)}")
    data: Any = json.loads(body)
    if not isinstance(data, dict):
        raise BadReply(f"the provider's 200 reply is JSON but not an object ({type(data).__name__}, {len(body)} bytes)")
    if "choices" not in data and isinstance(data.get("error"), dict | str):
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise BadReply(f"the provider's 200 reply is an error: {str(message)[:300]}")
    fatal = [e for e in errors if _read_by_agent(e["loc"])]
    if fatal:
        more = f" (and {len(fatal) - 3} more)" if len(fatal) > 3 else ""
        named = "; ".join(_describe(e) for e in fatal[:3])
        raise BadReply(f"the provider's 200 reply is not a chat completion: {named}{more}")
    return _with_choices(ChatCompletion.construct(**data))


def _with_choices(completion: ChatCompletion) -> ChatCompletion:
    if not completion.choices:
        raise BadReply("the provider's 200 reply has no choices")
    return completion


def _read_by_agent(loc: tuple[int | str, ...]) -> bool:
    """Whether a validation error's location is a field the agent uses (only the first choice)."""
    head = loc[0] if loc else None
    if head in ("id", "model"):
        return True
    if head == "usage":
        return len(loc) == 1 or loc[1] in _USAGE_TOKENS
    if head == "choices":
        return len(loc) == 1 or loc[1] == 0 and (
            len(loc) == 2 or loc[2] == "message" and (len(loc) == 3 or loc[3] in _MESSAGE_READ))
    return False


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def _excerpt(body: bytes, limit: int = 80) -> str:
    text = " ".join(body[:limit * 4].decode("utf-8", "replace").split())
    return repr(text[:limit] + ("…" if len(text) > limit or len(body) > limit * 4 else ""))


_scan = json.scanner.make_scanner(json.JSONDecoder())  # json.loads without its per-call layers
_JSON_SPACE = " \t\n\r"


def parse_chunk(payload: bytes) -> Any:
    """One streamed chunk's JSON (an SSE event's data), as ``json.loads`` reads it, at half its cost
    per call: a reply is a hundred of these."""
    text = ""
    try:
        text = payload.decode().strip(_JSON_SPACE)
        value, end = _scan(text, 0)
    except (ValueError, StopIteration):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        end = -1
    if end != len(text):
        raise BadReply(f"the provider's stream sent a chunk that is not JSON: {payload[:80]!r}")
    return value


class StreamAssembly:
    """A streamed reply's chunks (``chat.completion.chunk`` JSON, already parsed) assembled into the
    chat completion a non-streamed call returns: the first choice's text and tool-call deltas (by
    index: id, name, then argument fragments), the finish reason, the usage chunk.

    The SDK has this (``AsyncStream`` of ``ChatCompletionChunk`` into ``ChatCompletionStreamState``),
    at about 220 µs of CPU per chunk, 44 ms for a 200-token reply, ten times a whole job's cost. Here
    a chunk costs its ``json.loads`` and a few dict reads; the result is still judged once, as a
    whole, by the SDK's own ``ChatCompletion`` type (``completion``).
    """

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.text: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.chunks = 0

    def add(self, chunk: Any) -> str | None:
        """Take one chunk; returns the text it adds, if any."""
        if not isinstance(chunk, dict):
            raise BadReply(f"the provider's stream sent a chunk that is not a JSON object ({type(chunk).__name__})")
        if "error" in chunk and "choices" not in chunk:
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise BadReply(f"the provider's stream reported an error: {str(message)[:300]}")
        self.chunks += 1
        if not self.head:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        text = None
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            if delta.get("content"):
                text = delta["content"]
                self.text.append(text)
            for tc in delta.get("tool_calls") or ():
                call = self.calls.setdefault(tc.get("index", len(self.calls)),
                                             {"id": None, "type": "function", "name": None, "arguments": []})
                call["id"] = tc.get("id") or call["id"]
                function = tc.get("function") or {}
                call["name"] = function.get("name") or call["name"]
                if function.get("arguments"):
                    call["arguments"].append(function["arguments"])
        return text

    def completion(self) -> ChatCompletion:
        """The assembled reply, judged like a whole one (``parse_completion``)."""
        if not self.chunks:
            raise BadReply("the provider's stream ended without a single chunk")
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.text) if self.text else None}
        if self.calls:
            message["tool_calls"] = [
                {"id": c["id"], "type": c["type"], "function": {"name": c["name"], "arguments": "".join(c["arguments"])}}
                for _, c in sorted(self.calls.items())]
        body = {**self.head, "object": "chat.completion", "created": self.head.get("created") or 0,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason or "stop",
                             "logprobs": None}]}
        if self.usage is not None:
            body["usage"] = self.usage
        return parse_completion(json.dumps(body).encode(), "text/event-stream")


class SSELines:
    """Server-Sent Events' ``data:`` payloads from a byte stream, as the spec splits them (lines end
    with LF, CRLF or CR; an event ends at a blank line; several ``data:`` lines join with LF)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, data: bytes) -> list[bytes]:
        """The events whose data is complete after ``data``."""
        self._buffer += data
        if b"\r" in self._buffer:  # a CR ending this read may be the first half of a CRLF
            tail = b"\r" if self._buffer.endswith(b"\r") else b""
            body = self._buffer[:-1] if tail else self._buffer
            self._buffer = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        *lines, self._buffer = self._buffer.split(b"\n")
        out = []
        for line in lines:
            if not line:
                if self._data:
                    out.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
        return out
