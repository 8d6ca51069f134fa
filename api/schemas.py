"""What crosses the HTTP boundary that chatq's models do not cover: request bodies, path IDs, small responses."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, UrlConstraints

from chatq.tasks.client import IDEMPOTENCY_KEY, MAX_SESSION_TTL, SESSION_ID

from .errors import NotFound

ID = re.compile(r"^[0-9a-f]{32}$")


def known_id(value: str, what: str) -> str:
    """Job and batch IDs are uuid4 hex: anything else is unknown (404), and never reaches a Redis key."""
    if not ID.match(value):
        raise NotFound(f"unknown or expired {what}: {value}")
    return value


SessionId = Annotated[str, Path(
    pattern=SESSION_ID.pattern, description="1-128 letters, digits and `._:@-`, starting with a letter or digit.")]
JobId = Annotated[str, Path(description="The job's ID (32 hex digits); any other value is unknown.")]
BatchId = Annotated[str, Path(description="The batch's ID (32 hex digits); any other value is unknown.")]
CallbackUrl = Annotated[AnyHttpUrl, UrlConstraints(max_length=2048)]


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: Annotated[str, Field(min_length=1)] | Annotated[list[dict[str, Any]], Field(min_length=1)] = Field(
        description="The user's message: a string, or a list of chat-completions content parts (`text`, "
                    "`image_url`, `input_audio`, `file`, as the OpenAI API defines them). Not blank; text within "
                    "CHATQ_MAX_MESSAGE_CHARS, the parts' URLs and inline data within CHATQ_MAX_INLINE_BYTES.")
    params: dict[str, Any] | None = Field(
        None, description="Chat-completions parameters for this request over the agent's: `model`, `temperature`, "
                          "`top_p`, `max_tokens`, `max_completion_tokens`, `stop`, `seed`, `response_format`, "
                          "`tool_choice`, `parallel_tool_calls`, `reasoning_effort`, and `extra_body` (provider-"
                          "specific fields merged into the request body). The agent may forbid them (422).")
    agent: str | None = Field(None, max_length=128, description="A registered agent; default `default`.")
    metadata: dict[str, Any] | None = Field(
        None, description="Stored with the turn (size limit CHATQ_MAX_METADATA_BYTES).")
    idempotency_key: str | None = Field(
        None, pattern=IDEMPOTENCY_KEY.pattern, description="Resubmitting with the same key returns the same job.")
    callback_url: CallbackUrl | None = Field(
        None, description="POSTed the job record, signed (`X-Chatq-Signature`), when the job finishes.")
    on_busy: Literal["enqueue", "reject", "interrupt", "rollback"] = Field(
        "enqueue", description=(
            "What the message does when its session is busy (a message queued or running): `enqueue` waits "
            "behind them; `reject` is 409 instead; `interrupt` stops the running job and cancels the queued "
            "ones, then runs this message (the stopped turn keeps what it produced so far in the history: the "
            "user's message and the partial reply, marked cancelled); `rollback` does the same, but the "
            "interrupted turns leave no trace in the history."))
    session_ttl: int | None = Field(
        None, ge=0, le=MAX_SESSION_TTL, strict=True,
        description="The session's own retention: seconds it is kept once idle (0: forever). Omit to keep "
                    "the session's, or the server's default.")
    stream: bool = Field(
        False, strict=True,
        description="A reader will follow the job's events (`GET /v1/jobs/{job_id}/events`): its provider calls "
                    "stream from the first, and their text is written as it comes. Without it (and with the "
                    "worker's `CHATQ_STREAM=auto`), a job streams from its first call after a reader follows it. "
                    "Implied by the `stream=true` query parameter.")


class ChatIn(MessageIn):
    session_id: str | None = Field(
        None, pattern=SESSION_ID.pattern, description="Omit for a new session; created on first use.")


class SessionList(BaseModel):
    sessions: list[str]
    total: int = Field(description="Sessions in all; page with `offset` and `limit`.")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: bool
    workers: bool


class SessionIn(BaseModel):
    """A session to get or create; with `system_prompt` or `messages`, seeded with a history of its own."""

    model_config = ConfigDict(extra="forbid")

    session_id: str | None = Field(None, pattern=SESSION_ID.pattern, description="Omit for a new ID.")
    system_prompt: str | None = Field(None, min_length=1, description="Used instead of the agent's.")
    messages: list[dict[str, Any]] | None = Field(
        None, description="An earlier conversation as the chat-completions API has it (system, developer, user, "
                          "assistant with tool_calls, tool), checked as a whole. 409 if the session has history.")
    ttl: int | None = Field(None, ge=0, le=MAX_SESSION_TTL, strict=True,
                            description="The session's own retention: seconds kept once idle (0: forever).")


class RegenerateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str | None = Field(None, max_length=128, description="A registered agent; default `default`.")


class ForkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: int = Field(ge=0, strict=True, description="How many of the session's messages the fork copies.")
    into: str | None = Field(None, pattern=SESSION_ID.pattern, description="The new session's ID; omit for a new one.")
    replace: str | dict[str, Any] | None = Field(
        None, description="Message `at` of the fork instead of the original: a user message's text, or a message.")
