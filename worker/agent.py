"""The agent loop: model → tool calls → tool results → model, until a final answer.

Every completed step is handed to ``save`` (the runner checkpoints it under the session lease), and
``run`` resumes from such a checkpoint, so a redelivered job never runs a finished tool again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletion

from chatq.tasks.agent_profiles import AgentProfile
from chatq.tasks.models import FunctionCall, JobError, Message, ToolCall, Usage
from chatq.tasks.request_params import apply, forbidden
from chatq.tasks.structured_output import StructuredOutputInvalid, parse_reply, wants_json

from .event_writer import EventWriter
from .history_window import window
from .provider import Provider, ProviderError
from .rate_limit import RateLimiter
from .tokens import estimate_tokens
from .tools import ToolArgumentsError, ToolRegistry
from .tracing import tool_result, tool_span

log = logging.getLogger(__name__)

Save = Callable[["Turn"], Awaitable[None]]
"""Checkpoints a turn's completed steps (the runner's, under the session lease)."""
OnRetry = Callable[[JobError, float], Awaitable[None]]
"""Told of each provider retry in place: the error and the back-off before the next call."""


class AgentError(Exception):
    def __init__(self, type: str, message: str, retryable: bool = False, error: JobError | None = None):
        super().__init__(message)
        self.error = error or JobError(type=type, message=message, retryable=retryable)

    @classmethod
    def of(cls, error: JobError) -> AgentError:
        """The job fails with this error as it is (a provider's keeps the response it answered)."""
        return cls(error.type, error.message, error.retryable, error)


@dataclass
class Turn:
    """The messages this job adds to the session (user message first) and what they cost."""

    messages: list[Message]
    usage: Usage = field(default_factory=Usage)
    partial: list[str] = field(default_factory=list)
    """The text of the provider call streaming now (what a stop keeps of it)."""
    system_prompt: str | None = None
    """The session's own system prompt, used instead of the agent's."""
    parsed: Any = None
    """The final reply's JSON value, when the request asked for JSON (``response_format``)."""

    @property
    def tool_rounds(self) -> int:
        return sum(1 for m in self.messages if m.role == "assistant" and m.tool_calls)

    def pending_tool_calls(self) -> list[ToolCall]:
        last_call = next((m for m in reversed(self.messages) if m.role == "assistant" and m.tool_calls), None)
        if last_call is None:
            return []
        done = {m.tool_call_id for m in self.messages if m.role == "tool"}
        return [tc for tc in last_call.tool_calls or [] if tc.id not in done]

    def stopped(self, metadata: dict[str, Any]) -> list[Message]:
        """What the history keeps of a turn stopped midway: its messages and the partial reply (marked
        with ``metadata``), never a tool call without its result -- the next provider call must stay
        valid -- so calls that never ran are dropped from their assistant message."""
        done = {m.tool_call_id for m in self.messages if m.role == "tool"}
        kept: list[Message] = []
        for m in self.messages:
            if m.role == "assistant" and m.tool_calls and any(tc.id not in done for tc in m.tool_calls):
                calls = [tc for tc in m.tool_calls if tc.id in done] or None
                m = m.model_copy(update={"tool_calls": calls, "metadata": {**m.metadata, **metadata}})
                if not calls and not m.content:
                    continue
            kept.append(m)
        if text := "".join(self.partial):
            kept.append(Message(role="assistant", content=text, metadata=dict(metadata)))
        return kept


class Agent:
    def __init__(self, profile: AgentProfile, tools: ToolRegistry, provider: Provider,
                 limiter: RateLimiter | None = None):
        self.profile = profile
        self.tools = tools
        self.provider = provider
        self.limiter = limiter

    @property
    def history_limit(self) -> int:
        """No window can hold more messages than this: each costs at least 4 estimated tokens."""
        return self.profile.history_tokens // 4 + 1

    def request(self, history: list[Message], turn: Turn, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The provider request: the agent's settings, then the job's own parameters over them
        (``chatq.tasks.request_params.apply``)."""
        p = self.profile
        prompt = turn.system_prompt or p.system_prompt
        system = [Message(role="system", content=prompt)] if prompt else []
        budget = p.history_tokens - sum(estimate_tokens(m.to_provider()) for m in system)
        messages = system + window(history, turn.messages, budget) + turn.messages
        req: dict[str, Any] = {"model": p.model, "messages": [m.to_provider() for m in messages]}
        if p.temperature is not None:
            req["temperature"] = p.temperature
        if p.max_output_tokens is not None:
            req["max_tokens"] = p.max_output_tokens
        if self.tools.names():
            req["tools"] = self.tools.schemas()
        return apply(req, params) if params else req

    def check_params(self, params: dict[str, Any] | None) -> None:
        """Refuse what the agent's ``allow_overrides`` forbids: a producer that did not know this
        agent's profile could not refuse it at the door."""
        refused = forbidden(params or {}, self.profile.allow_overrides)
        if refused:
            raise AgentError("OverrideNotAllowed", f"agent {self.profile.name!r} does not allow overriding "
                             f"{', '.join(refused)} (allow_overrides = {self.profile.allow_overrides!r})")

    async def run_tool(self, call: ToolCall) -> Message:
        """Never raises: every failure becomes a tool message the model can read. Traced, when
        traces are on (``tracing.tool_span``)."""
        with tool_span(call) as span:
            result = await self._run_tool(call)
            tool_result(span, result.metadata["ok"])
            return result

    async def _run_tool(self, call: ToolCall) -> Message:
        started = time.perf_counter()
        tool = self.tools.get(call.function.name)
        ok = False
        if tool is None:
            content = f"error: unknown tool {call.function.name!r}; available: {', '.join(self.tools.names()) or 'none'}"
        else:
            try:
                content, ok = await tool.call(call.function.arguments), True
            except ToolArgumentsError as exc:
                content = f"error: {exc}"
            except Exception as exc:  # a tool's own failure is data for the model
                log.info("tool %s raised %r", call.function.name, exc)
                content = f"error: tool {call.function.name!r} raised {type(exc).__name__}: {exc}"
        return Message(
            role="tool", content=content, tool_call_id=call.id,
            metadata={"tool": call.function.name, "ok": ok,
                      "duration_ms": round((time.perf_counter() - started) * 1000, 3)},
        )

    async def complete(self, request: dict[str, Any], on_retry: OnRetry | None, turn: Turn,
                       events: EventWriter | None = None) -> ChatCompletion:
        if self.limiter:
            estimate = sum(estimate_tokens(m) for m in request["messages"]) + (
                request.get("max_tokens") or request.get("max_completion_tokens") or 0)
            await self.limiter.acquire(self.profile.model, self.profile.rpm, self.profile.tpm, estimate)
        turn.partial = []
        if events is not None:
            events.next_call()

        def on_delta(text: str) -> None:
            turn.partial.append(text)
            if events is not None:
                events.delta(text)

        async def retried(error: JobError, delay: float) -> None:
            turn.partial = []  # the next call streams its text again from the start
            if events is not None:
                events.event("provider.retry", {"call": events.call, "error": error.model_dump(), "delay": delay})
            if on_retry:
                await on_retry(error, delay)

        mode = self.provider.settings.stream

        def streamed() -> bool:
            """``CHATQ_STREAM``: every call, or (``auto``) those of a job somebody asked to watch: the
            writer is followed once a reader came or the job was submitted to be streamed."""
            return mode == "always" or mode == "auto" and events is not None and events.followed

        try:
            return await self.provider.complete(request, on_retry=retried,
                                                on_delta=on_delta if events is not None else None,
                                                pace=events.pace if events is not None else None,
                                                stream=streamed)
        except ProviderError as exc:
            raise AgentError.of(exc.error) from exc

    async def run(self, history: list[Message], turn: Turn, save: Save | None = None,
                  on_retry: OnRetry | None = None, events: EventWriter | None = None,
                  params: dict[str, Any] | None = None) -> Turn:
        """Run the turn to its final reply. With a ``response_format`` asking for JSON, that reply
        is parsed (``turn.parsed``); one that does not parse or validate is asked for again, up to
        the agent's ``structured_output_retries``, each a fresh call on the same request (its text
        voided for readers by a ``provider.retry`` event), then fails the job."""
        self.check_params(params)
        response_format = (params or {}).get("response_format")
        invalid_replies = 0
        while True:
            pending = turn.pending_tool_calls()
            if pending:
                for call in pending:
                    result = await self.run_tool(call)
                    turn.messages.append(result)
                    if events is not None:
                        events.event("tool.result", tool_result_data(result))
                    if save:
                        await save(turn)
                continue
            completion = await self.complete(self.request(history, turn, params), on_retry, turn, events)
            turn.partial = []
            if completion.usage:
                turn.usage = turn.usage + Usage(
                    prompt_tokens=completion.usage.prompt_tokens,
                    completion_tokens=completion.usage.completion_tokens,
                    total_tokens=completion.usage.total_tokens, model=completion.model,
                )
            choice = completion.choices[0]
            tool_calls = [
                ToolCall(id=tc.id, function=FunctionCall(name=tc.function.name, arguments=tc.function.arguments))
                for tc in (choice.message.tool_calls or []) if getattr(tc, "function", None)
            ]
            reply = Message(
                role="assistant", content=choice.message.content, tool_calls=tool_calls or None,
                metadata={"model": completion.model, "finish_reason": choice.finish_reason,
                          "completion_id": completion.id},
            )
            if tool_calls and turn.tool_rounds >= self.profile.max_tool_iterations:
                raise AgentError(
                    "MaxToolIterations",
                    f"the model still asked for tools after {self.profile.max_tool_iterations} rounds",
                )
            if not tool_calls and wants_json(response_format):
                try:
                    turn.parsed = parse_reply(choice.message.content, response_format, choice.finish_reason,
                                              getattr(choice.message, "refusal", None))
                except StructuredOutputInvalid as exc:
                    invalid_replies += 1
                    if invalid_replies > self.profile.structured_output_retries:
                        calls = f"{invalid_replies} call{'s' if invalid_replies > 1 else ''}"
                        raise AgentError(exc.type, f"{exc} (after {calls})") from None
                    error = JobError(type=exc.type, message=str(exc), retryable=True)
                    log.info("structured output invalid (%s); asking again", exc)
                    if events is not None:
                        events.event("provider.retry", {"call": events.call, "error": error.model_dump(), "delay": 0})
                    if on_retry:
                        await on_retry(error, 0)
                    continue
            turn.messages.append(reply)
            if not tool_calls:
                return turn
            if events is not None:
                for tc in tool_calls:
                    events.event("tool.call", tool_call_data(tc))
            if save:
                await save(turn)


def tool_call_data(call: ToolCall) -> dict[str, Any]:
    """A ``tool.call`` event's data."""
    return {"id": call.id, "name": call.function.name, "arguments": call.function.arguments}


def tool_result_data(result: Message) -> dict[str, Any]:
    """A ``tool.result`` event's data."""
    return {"id": result.tool_call_id, "name": result.metadata.get("tool"), "output": result.content,
            "ok": result.metadata.get("ok", False)}
