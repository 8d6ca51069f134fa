"""The worker's spans of a job's trace (``chatq.tasks.tracing`` explains when traces are on): under
the submission's context, carried in the job's ``traceparent``, the wait in the session's queue
(``chatq.queue_wait``, drawn afterwards from the job's ``created_at`` to its start), the run
(``chatq.job``), each provider call (``chatq.provider_call``, a retried call once per attempt) and
each tool call (``chatq.tool``).

A job runs as coroutines on the process's event loop. ``job_span`` makes the run's span current in
the session's task; the agent's own task (``asyncio.ensure_future``) copies that context when it is
created, so the provider and tool spans inside it are the run's children however the loop
interleaves thousands of sessions. With tracing off every hook returns the shared no-op context.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

from chatq.tasks import tracing
from chatq.tasks.models import Job, ToolCall, utcnow

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer
    from openai.types.chat import ChatCompletion


def job_span(job: Job, worker: str) -> AbstractContextManager[Any]:
    """Around one run of a job on this process: ``chatq.job`` (a consumer span, child of the job's
    submission), and for its first run the ``chatq.queue_wait`` before it, a sibling."""
    t = tracing.tracer()
    return tracing.OFF if t is None else _job_span(t, job, worker)


@contextmanager
def _job_span(t: Tracer, job: Job, worker: str) -> Iterator[Span]:
    from opentelemetry.trace import SpanKind

    parent = tracing.parent(job.traceparent)
    attributes = tracing.job_attributes(job)
    # Drawn under the submission only: a later run's wait would count the earlier runs too, and a
    # job submitted untraced has no trace to put it in (its run starts one).
    if job.attempts == 1 and parent is not None:
        end = tracing.nanos(job.started_at or utcnow())
        start = min(tracing.nanos(job.created_at), end)  # the producer's clock may run ahead of this one
        t.start_span("chatq.queue_wait", context=parent, attributes=attributes, start_time=start).end(end)
    with t.start_as_current_span("chatq.job", context=parent, kind=SpanKind.CONSUMER, attributes={
            **attributes, "chatq.attempt": job.attempts, "chatq.worker": worker}) as span:
        yield span


def job_finished(status: str, error: str) -> None:
    """The current run's outcome, on its span: ``chatq.status``, and ``error.type`` for a failed or
    cancelled job (a failed one marks the span an error)."""
    if tracing.tracer() is None:
        return
    from opentelemetry.trace import Status, StatusCode, get_current_span

    span = get_current_span()
    span.set_attribute("chatq.status", status)
    if error:
        span.set_attribute("error.type", error)
    if status == "failed":
        span.set_status(Status(StatusCode.ERROR, error))


class CallSpan:
    """One provider call's span, told what the call does: its first text, its reply, its outcome
    (``ok`` or the job error type it would be; set on the span when the call ends)."""

    def __init__(self, span: Span):
        self.span = span
        self.outcome = "error"

    def first_token(self) -> None:
        self.span.add_event("first_token")

    def answered(self, completion: ChatCompletion) -> None:
        s = self.span
        s.set_attribute("gen_ai.response.model", completion.model)
        s.set_attribute("gen_ai.response.id", completion.id)
        if completion.choices and completion.choices[0].finish_reason:
            s.set_attribute("gen_ai.response.finish_reasons", [str(completion.choices[0].finish_reason)])
        if completion.usage is not None:
            s.set_attribute("gen_ai.usage.input_tokens", completion.usage.prompt_tokens)
            s.set_attribute("gen_ai.usage.output_tokens", completion.usage.completion_tokens)

    def end(self) -> None:
        self.span.set_attribute("chatq.outcome", self.outcome)
        if self.outcome not in ("ok", "cancelled"):
            from opentelemetry.trace import Status, StatusCode

            self.span.set_attribute("error.type", self.outcome)
            self.span.set_status(Status(StatusCode.ERROR, self.outcome))


def provider_call(request: dict[str, Any], attempt: int) -> AbstractContextManager[CallSpan | None]:
    """Around one provider call: ``chatq.provider_call`` (a client span) with the model asked for,
    the retry attempt (0: the first call) and, once it ends, its outcome (``ok`` or the job error
    type it would be), the reply's model, usage and finish reason, and a ``first_token`` event."""
    t = tracing.tracer()
    return tracing.OFF if t is None else _call_span(t, request, attempt)


@contextmanager
def _call_span(t: Tracer, request: dict[str, Any], attempt: int) -> Iterator[CallSpan]:
    from opentelemetry.trace import SpanKind

    with t.start_as_current_span("chatq.provider_call", kind=SpanKind.CLIENT, record_exception=False,
                                 set_status_on_exception=False, attributes={
                                     "gen_ai.operation.name": "chat", "gen_ai.request.model": str(request.get("model")),
                                     "chatq.retry_attempt": attempt}) as span:
        call = CallSpan(span)
        try:
            yield call
        except asyncio.CancelledError:  # the job was asked to stop: not the provider's failure
            call.outcome = "cancelled"
            raise
        finally:
            call.end()


def tool_span(call: ToolCall) -> AbstractContextManager[Any]:
    """Around one tool call: ``chatq.tool``, with the tool's name and call ID (``tool_result`` adds
    whether it worked)."""
    t = tracing.tracer()
    if t is None:
        return tracing.OFF
    return t.start_as_current_span("chatq.tool", attributes={
        "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": call.function.name,
        "gen_ai.tool.call.id": call.id})


def tool_result(span: Span | None, ok: bool) -> None:
    """A tool call's outcome on its span (a tool's failure is data for the model, not an error)."""
    if span is not None:
        span.set_attribute("chatq.tool.ok", ok)
