"""Batch input: JSONL lines, in chatq's own shape or the OpenAI Batch API's, into validated jobs.

The file is split by one JSON Lines parser (``jsonl_lines``) whichever way it arrives (a path, the
CLI's stdin, an HTTP body). Every line is checked (UTF-8, JSON, shape, duplicates, and each turn
through ``ChatClient.build_job``) before anything is written, so a bad file is refused whole with
its line numbers, or, with ``skip_invalid``, its bad lines are listed and left out; it is never
half-submitted.

OpenAI lines run as at OpenAI: one completion per line. ``body.messages`` up to its last user
message seed a new session (a leading ``system`` message becomes the session's own system prompt;
developer, few-shot user and assistant messages, tool calls and results are its history, checked
as a conversation); the last user message (a string or content parts) is the line's one turn. The
body's other fields (``model``, ``temperature``, ``response_format``...) are the turn's per-request
parameters, checked like any request's: one the agent forbids, or chatq cannot honour, fails its line.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import InvalidRequest
from .models import Job, Message

Source = str | os.PathLike | bytes | BinaryIO | Iterable[str | bytes | dict]
"""JSONL: a file path, the bytes of a file, a binary file; or lines, taken as given (JSON text or
already-parsed objects)."""

BOM = b"\xef\xbb\xbf"
_JSON_SPACE = " \t\r\n"

CustomId = Annotated[str, Field(min_length=1, max_length=256)]
_SHOWN_ERRORS = 50


class LineError(BaseModel):
    line: int
    custom_id: str | None = None
    error: str


class BatchInvalid(InvalidRequest):
    """Some lines are invalid; nothing was written. ``errors`` lists every one."""

    def __init__(self, errors: list[LineError]):
        self.errors = errors
        shown = "\n".join(f"  line {e.line}: {e.error}" for e in errors[:_SHOWN_ERRORS])
        more = f"\n  ... and {len(errors) - _SHOWN_ERRORS} more" if len(errors) > _SHOWN_ERRORS else ""
        super().__init__(f"{len(errors)} invalid line(s); nothing was submitted "
                         f"(--skip-invalid leaves them out):\n{shown}{more}")


class NativeLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    custom_id: CustomId
    session_id: str | None = None
    agent: str | None = None
    messages: list[str] | None = Field(None, min_length=1)
    message: str | None = None
    metadata: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> NativeLine:
        if (self.messages is None) == (self.message is None):
            raise ValueError("give either 'messages' (a list of turns) or 'message' (one turn)")
        return self

    def turns(self) -> list[str]:
        return self.messages if self.messages is not None else [self.message or ""]


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # tool_calls, tool_call_id, name: checked as a conversation

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """A system prompt's text (text parts joined)."""
        if isinstance(self.content, list):
            if any(part.get("type", "text") != "text" for part in self.content):
                raise ValueError("a system message takes text content parts only")
            return "".join(str(part.get("text", "")) for part in self.content)
        return self.content or ""


class OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    messages: list[OpenAIMessage] = Field(min_length=1)


class OpenAILine(BaseModel):
    """An OpenAI Batch API request line; ``session_id`` and ``agent`` are chatq's optional extras."""

    model_config = ConfigDict(extra="forbid")

    custom_id: CustomId
    method: Literal["POST"] = "POST"
    url: Literal["/v1/chat/completions", "/chat/completions"]
    body: OpenAIBody
    session_id: str | None = None
    agent: str | None = None

    def turns(self) -> list[Any]:
        """The one turn: the last user message's content, as given."""
        return [self.body.messages[self._last_user()].content]

    @property
    def params(self) -> dict[str, Any]:
        """The body's fields besides ``messages``: the turn's per-request parameters."""
        return dict(self.body.model_extra or {})

    def _last_user(self) -> int:
        last = next((i for i in range(len(self.body.messages) - 1, -1, -1) if self.body.messages[i].role == "user"),
                    None)
        if last is None:
            raise ValueError("body.messages has no user message")
        if last != len(self.body.messages) - 1:
            raise ValueError(f"body.messages[{last + 1}] follows the last user message: a line asks for the "
                             "reply to its last user message, so nothing may come after it")
        return last

    def seed(self) -> tuple[str | None, list[dict[str, Any]]]:
        """The session's own system prompt (a leading system message) and the history before the turn."""
        earlier = self.body.messages[:self._last_user()]
        prompt = None
        if earlier and earlier[0].role == "system":
            prompt, earlier = earlier[0].text(), earlier[1:]
        return prompt, [m.model_dump(exclude_none=True) | {"content": m.content} for m in earlier]


@dataclass
class Conversation:
    custom_id: str
    session_id: str
    jobs: list[Job]
    history: list[Message] = field(default_factory=list)  # seeded before the first turn
    system_prompt: str | None = None
    openai: bool = False  # an OpenAI Batch line: its output can be OpenAI's too


@dataclass
class Plan:
    """What a batch would write: the valid conversations, the invalid lines, and notes for the user."""

    conversations: list[Conversation] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def jsonl_lines(data: bytes | BinaryIO) -> Iterator[tuple[int, bytes]]:
    """JSON Lines as the format defines them: numbered lines split on ``\\n`` only.

    U+2028, NEL or a lone ``\\r`` inside a line stay in it (``str.splitlines`` would cut there, and
    they are valid inside JSON strings); a UTF-8 BOM before the first line is dropped. Lines stay
    bytes: each is decoded on its own, so one line that is not UTF-8 is that line's error.
    """
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    for number, line in enumerate(stream, 1):  # a binary stream iterates on b"\n" only
        yield number, line.removeprefix(BOM) if number == 1 else line


def blank(line: str | bytes | dict) -> bool:
    """Nothing but JSON whitespace: skipped, as JSON Lines readers do."""
    if isinstance(line, bytes):
        return not line.strip(_JSON_SPACE.encode())
    return isinstance(line, str) and not line.strip(_JSON_SPACE)


def count_lines(data: bytes) -> int:
    """Non-blank lines: what a batch of these bytes holds at most as conversations."""
    return sum(1 for _, line in jsonl_lines(data) if not blank(line))


def _lines(source: Source) -> Iterator[tuple[int, str | bytes | dict]]:
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                yield from jsonl_lines(f)
        except OSError as exc:
            raise InvalidRequest(f"cannot read {os.fspath(source)!a}: {exc.strerror or exc}") from exc
    elif isinstance(source, (bytes, bytearray)) or hasattr(source, "read"):
        yield from jsonl_lines(source)  # type: ignore[arg-type]
    else:
        for number, line in enumerate(source, 1):
            yield number, line.removeprefix("\ufeff") if number == 1 and isinstance(line, str) else line


def _load(raw: str | bytes | dict) -> dict:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}") from None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError("a line must be a JSON object")
    return raw


def _parse(data: dict) -> NativeLine | OpenAILine:
    try:
        if "body" in data or "url" in data:
            return OpenAILine.model_validate(data)
        return NativeLine.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_describe(exc)) from None


def _conversation(line: NativeLine | OpenAILine, build: Callable[..., Job], agent: str | None,
                  check: Callable[[list[Any]], list[Message]]) -> Conversation:
    turns = line.turns()
    metadata = line.metadata if isinstance(line, NativeLine) else None
    params = line.params if isinstance(line, OpenAILine) else None
    # A probe turn checks session, agent, metadata and parameters once, so turn errors name only the turn.
    probe = build("probe", line.session_id, agent if line.agent is None else line.agent, metadata=metadata,
                  params=params)
    jobs = []
    for i, text in enumerate(turns, 1):
        try:
            jobs.append(build(text, probe.session_id, probe.agent, metadata=metadata, params=params))
        except InvalidRequest as exc:
            raise ValueError(f"turn {i}: {exc}" if len(turns) > 1 else str(exc)) from None
    if isinstance(line, NativeLine):
        return Conversation(line.custom_id, probe.session_id, jobs)
    prompt, earlier = line.seed()
    try:
        history = check(earlier)
    except InvalidRequest as exc:
        raise ValueError(f"body.messages: {exc}") from None
    return Conversation(line.custom_id, probe.session_id, jobs, history, prompt, openai=True)


def plan(source: Source, build: Callable[..., Job], agent: str | None = None,
         check: Callable[[list[Any]], list[Message]] = lambda m: m) -> Plan:
    """Validate every line into jobs without writing anything.

    ``build`` is ``ChatClient.build_job`` (bound to the batch ID); ``agent`` is the default for
    lines that name none; ``check`` turns an OpenAI line's earlier messages into a valid history
    (``chatq.tasks.client.validate_conversation``) or raises InvalidRequest.
    """
    out = Plan()
    custom_ids: dict[str, int] = {}
    sessions: dict[str, int] = {}
    for number, raw in _lines(source):
        if blank(raw):
            continue
        custom_id = None
        try:
            data = _load(raw)
            custom_id = data.get("custom_id")
            line = _parse(data)
            if custom_id in custom_ids:
                raise ValueError(f"duplicate custom_id {custom_id!r} (first on line {custom_ids[custom_id]})")
            if line.session_id in sessions:
                raise ValueError(f"session {line.session_id!r} is also used on line {sessions[line.session_id]}; "
                                 "put all of a session's turns on one line")
            conversation = _conversation(line, build, agent, check)
        except ValueError as exc:  # InvalidRequest is one too
            out.errors.append(LineError(line=number, custom_id=custom_id if isinstance(custom_id, str) else None,
                                        error=str(exc)))
            continue
        custom_ids[line.custom_id] = number
        if line.session_id is not None:
            sessions[line.session_id] = number
        out.conversations.append(conversation)
    return out
