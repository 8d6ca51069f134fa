"""The models that cross a boundary (Redis, Celery, CLI, HTTP): defined once, here."""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class CancelMode(StrEnum):
    """How a running job that is asked to stop leaves the history: ``keep`` the user's message and the
    partial reply (a stop button, ``on_busy="interrupt"``), or ``rollback``: no trace of the turn."""

    keep = "keep"
    rollback = "rollback"


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


ContentPart = dict[str, Any]
"""A chat-completions content part (``{"type": "text", "text": ...}``, ``image_url``, ``input_audio``,
``file``): checked against the ``openai`` SDK's types at the door (``chatq.tasks.content``), then kept
and sent exactly as given."""
Content = str | list[ContentPart]
"""A user message: a string, or a list of content parts."""


class Message(BaseModel):
    """One history entry; replays to the provider exactly (metadata and created_at stay local)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utcnow)

    def to_provider(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [tc.model_dump() for tc in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    model: str | None = None

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            model=other.model or self.model,
        )


class JobResult(BaseModel):
    content: str | None
    message: Message | None = Field(None, description="The reply; None for a fork (``content`` names its new session).")
    usage: Usage
    tool_calls: int = 0
    parsed: Any = Field(None, description=(
        "With a `response_format` of `json_schema` or `json_object`: the reply's JSON value, validated "
        "against the schema. Null otherwise."))


class Checkpoint(BaseModel):
    """A running job's finished steps (its user message, tool calls and results) and their cost."""

    messages: list[Message]
    usage: Usage = Field(default_factory=Usage)


class ProviderErrorObject(BaseModel):
    """The ``error`` object of an OpenAI-compatible API's error response, as the provider gave it (a
    field it left out or gave in another type, as vLLM's numeric ``code``, is null or its text)."""

    message: str
    type: str | None = None
    param: str | None = None
    code: str | None = None


class ProviderErrorResponse(BaseModel):
    """An error response the provider answered a call with: kept on the job's error so that an OpenAI
    Batch output line can carry it as OpenAI's would (``response: {status_code, body: {error}}``)."""

    status_code: int
    error: ProviderErrorObject


class JobError(BaseModel):
    type: str
    message: str
    retryable: bool = False
    provider_response: ProviderErrorResponse | None = Field(None, description=(
        "Set when the provider answered with an HTTP error (`ProviderHTTP<status>`, `InsufficientQuota`): "
        "its status and its own error object."))


class SessionOp(BaseModel):
    """A job that changes its session's history instead of adding a turn, queued behind the
    session's earlier jobs like any turn, so it sees the history they leave.

    ``regenerate``: the last user message's reply (and its tool steps) is replaced by a new one.
    ``fork``: the history up to message ``at`` (exclusive) is copied into the new session ``into``,
    followed by ``replace`` if given (an edited message ``at``), with the session's own system prompt.
    """

    kind: Literal["regenerate", "fork"]
    at: int | None = Field(None, ge=0, description="fork: how many messages to copy")
    into: str | None = Field(None, description="fork: the new session's ID")
    replace: Message | None = Field(None, description="fork: the message that follows the copy")


class Job(BaseModel):
    job_id: str
    session_id: str
    agent: str = "default"
    message: Content = Field(description="The user's message as given: a string, or a list of content parts.")
    params: dict[str, Any] | None = Field(None, description=(
        "Chat-completions parameters this request sets over its agent's (`model`, `temperature`, "
        "`response_format`...; `extra_body` merged into the provider's request body)."))
    status: JobStatus = JobStatus.queued
    attempts: int = 0
    worker: str | None = Field(None, description="host:pid of the worker that last ran it")
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: JobResult | None = None
    error: JobError | None = None
    provider_retries: int = 0
    last_error: JobError | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None
    batch_id: str | None = None
    callback_url: str | None = None
    webhook: dict[str, Any] | None = None
    op: SessionOp | None = Field(None, description="Set for a job that regenerates or forks its session.")
    cancel: CancelMode | None = Field(
        None, description="Set when the job was asked to stop while running; the worker ends it `cancelled`.")
    traceparent: str | None = Field(None, description=(
        "With OpenTelemetry traces on: the W3C `traceparent` of the job's submission span, which the "
        "worker's spans continue (its trace ID finds the job's whole trace)."))


EVENT_TYPES = ("job.started", "job.restarted", "message.delta", "provider.retry", "tool.call", "tool.result",
               "job.succeeded", "job.failed", "job.cancelled")
TERMINAL_EVENTS = frozenset({"job.succeeded", "job.failed", "job.cancelled"})


class JobEvent(BaseModel):
    """One entry of a job's event log. ``seq`` counts from 1 with no gaps over all the job's attempts.

    Types and their ``data``: ``job.started`` / ``job.restarted`` ``{attempt, worker}`` (restarted: a
    redelivered job starts over after its worker died, so a reader drops the partial text it showed;
    the checkpoint's finished tool steps are sent again after it, marked ``replayed``);
    ``message.delta`` ``{text, call}`` (assistant text, coalesced; ``call`` counts the turn's provider
    calls); ``provider.retry`` ``{call, attempt, error, delay}`` (the call's text so far is void: the
    retried call streams it again); ``tool.call`` ``{id, name, arguments}``; ``tool.result`` ``{id,
    name, output, ok}``; and one terminal event, ``job.succeeded`` / ``job.failed`` /
    ``job.cancelled``, whose data is the finished job.
    """

    seq: int
    type: str
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


class Session(BaseModel):
    session_id: str
    created_at: datetime
    updated_at: datetime
    messages: list[Message] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    pending_jobs: list[str] = Field(default_factory=list)
    system_prompt: str | None = Field(None, description="The session's own system prompt, used instead of its agent's.")
    ttl: int | None = Field(None, description=(
        "Seconds the session is kept once idle (nothing queued or running): its own retention, else "
        "CHATQ_SESSION_TTL. None: kept until deleted."))
