"""Batch conversation processing: thousands of conversations in, one result line per conversation out.

A batch is bookkeeping over the core, not a second engine: each conversation's turns are ordinary
jobs in its own session's FIFO, so they run in order, conversations run in parallel, and a killed
worker's sessions are taken up by the lease and the sweeper. Submission validates everything
first, then writes all jobs in chunked pipelines and publishes one wake-up per session over one
broker producer.

Redis holds ``{ns}:batch:{id}`` (a small hash, written last, so an existing batch ID always names
a completely written batch) and ``{ns}:batch:{id}:conversations`` (a list with one compact JSON
array ``[custom_id, session_id, job_id...]`` per conversation, in input order). Counts are
computed from the job records on each read, so nothing can drift. Both keys expire after the
batch's jobs' records, whether or not anyone reads the batch (``chatq.tasks.batch_expiry``).

The namespace's ``batches`` index (a sorted set of the newest ``BATCHES_MAX`` batch IDs by creation
time, written once per batch after its hash) lets the console list recent batches; their progress there
comes from the hash's count of unfinished turns, one read per batch, not from every job's record.

A failed turn fails its conversation but not the rest of it: later turns still run, as they do in
an interactive session (the failed turn leaves no history), and the result line carries every
reply produced plus the error of the first failing turn.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import lru_cache, partial
from itertools import islice
from typing import Any, Literal, NamedTuple

import redis
from pydantic import BaseModel, Field, computed_field, model_validator

from . import batch_expiry
from .batch_input import BatchInvalid, Conversation, LineError, Source, plan
from .client import ChatClient, id_text, looks_like_id, new_id, validate_conversation
from .errors import ChatQError, InvalidRequest, WaitTimeout
from .job_store import encode_job
from .models import JobError, JobResult, ProviderErrorObject, ProviderErrorResponse, Usage, utcnow
from .urls import check_destination
from .session_machine import CancelOutcome

__all__ = ["BatchClient", "BatchInfo", "BatchInvalid", "BatchNotFound", "BatchStatus", "BatchSummary",
           "CancelReport", "ConversationResult", "Counts", "LineError", "TurnError"]

log = logging.getLogger(__name__)

CHUNK = 2000
"""Jobs (or conversations, on reads) per pipeline round trip: large enough to amortize latency,
small enough to keep the client's buffers and Redis's output buffer modest."""

BATCHES_MAX = 1000
"""Batches the namespace's index lists (the newest); older ones are still read by ID until they expire."""

ConversationStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "missing"]
OutputFormat = Literal["chatq", "openai"]


class BatchNotFound(ChatQError, LookupError):
    """Unknown batch ID, or its record expired after the result TTL."""


class BatchRef(BaseModel):
    batch_id: str
    created_at: datetime


class BatchInfo(BatchRef):
    total: int = Field(description="Conversations submitted.")
    turns: int = Field(description="Jobs submitted: every turn of every conversation.")
    skipped: list[LineError] = Field(default_factory=list, description="Invalid lines left out (skip_invalid).")
    warnings: list[str] = Field(default_factory=list)
    output_format: OutputFormat = Field(
        "chatq", description="How its results are written unless asked otherwise: `openai` when every line was "
                             "an OpenAI Batch request line.")


class Counts(BaseModel):
    total: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    missing: int = Field(0, description="Job records gone: expired after the result TTL.")

    def add(self, status: str) -> None:
        self.total += 1
        setattr(self, status, getattr(self, status) + 1)


class BatchStatus(Counts, BatchRef):
    """Conversation counts at the top level; ``turns`` counts their jobs."""

    finished_at: datetime | None = None
    turns: Counts = Field(default_factory=Counts)

    @computed_field
    @property
    def done(self) -> bool:
        return self.turns.queued == 0 and self.turns.running == 0


class BatchSummary(BatchRef):
    """A batch as the recent list shows it: from its hash alone, without reading its jobs."""

    total: int = Field(description="Conversations.")
    turns: int = Field(description="Jobs: every turn of every conversation.")
    turns_finished: int = Field(description="Turns counted as finished so far by the workers (and cancels); a "
                                            "count lost to a worker's death shows here until the batch is read.")
    finished_at: datetime | None = None

    @computed_field
    @property
    def done(self) -> bool:
        return self.finished_at is not None


class TurnError(JobError):
    turn: int = Field(description="1-based: the turn whose job failed (replies[turn - 1] is null).")


class ConversationResult(BaseModel):
    custom_id: str
    session_id: str
    status: ConversationStatus
    replies: list[str | None] = Field(description="One per turn; null for a turn that failed or has not run.")
    usage: Usage
    error: TurnError | None = None
    job_ids: list[str]


class OpenAIErrorBody(BaseModel):
    """An error response's body, as OpenAI's API answers: ``{"error": {message, type, param, code}}``."""

    error: ProviderErrorObject


class OpenAIResponse(BaseModel):
    """The response a request got: 200 and a ``chat.completion``, or the provider's error status and body."""

    status_code: int
    request_id: str = Field(description="The job's ID.")
    body: OpenAIErrorBody | dict[str, Any] = Field(
        description="A `chat.completion` object (200), or the provider's error body.")


class OpenAIError(BaseModel):
    """Why a request got no response: chatq's error type as the code (a tool's failure, a cancel...)."""

    code: str
    message: str


class OpenAIResultLine(BaseModel):
    """One line of OpenAI's Batch output format, for the conversation's last turn: ``response`` for a
    request the provider answered (a completion or an HTTP error), else ``error``; never both."""

    id: str
    custom_id: str
    response: OpenAIResponse | None
    error: OpenAIError | None

    @model_validator(mode="after")
    def _one_of(self) -> OpenAIResultLine:
        if (self.response is None) == (self.error is None):
            raise ValueError("a batch output line has a response or an error, not both or neither")
        return self


class CancelReport(BaseModel):
    batch_id: str
    cancelled: int = Field(description="Turns cancelled by this call; running and finished turns are left alone.")
    status: BatchStatus


class Entry(NamedTuple):
    custom_id: str
    session_id: str
    job_ids: list[str]


def _chunks(items: list, size: int = CHUNK) -> Iterator[list]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def conversation_status(turns: list[str | None]) -> ConversationStatus:
    if all(s == "queued" for s in turns):
        return "queued"
    if any(s in ("queued", "running") for s in turns):
        return "running"
    for status in ("failed", "cancelled"):
        if status in turns:
            return status
    return "missing" if None in turns else "succeeded"


class BatchStore:
    """The batch's two keys, and pipelined reads of its job records."""

    def __init__(self, client: ChatClient):
        self.r: redis.Redis = client.r
        self.machine = client.machine
        self.sessions = client.sessions
        self.keys = client.keys
        self.settings = client.settings
        self.key = client.keys.batch
        self.conversations_key = client.keys.batch_conversations

    def write(self, info: BatchInfo, conversations: list[Conversation]) -> None:
        """Jobs and conversation entries in chunked pipelines; the batch hash last.

        Every key expires from its first write (a submitter that dies midway leaves nothing
        forever); the hash counts the turns still unfinished. Each chunk's fleet-wide marks (the
        listing, the sweeper's pending marks) are sent in a round trip before its sessions' writes:
        on a Redis Cluster the two live on different nodes, which do not order one pipeline's
        commands, and a crash must never leave work without a mark (``session_machine``). Seeded
        histories (OpenAI lines) go in a round trip of their own before their jobs: a Redis that
        lost the seed script but not the submit script would have the pipeline send the seeds
        again after the jobs (``pipelines``), and a session with work is never seeded.
        """
        entries_key = self.conversations_key(info.batch_id)
        ttl = batch_expiry.unfinished_ttl(self.settings)
        marks = self.r.pipeline(transaction=False)
        seeds = self.r.pipeline(transaction=False)
        pipe = self.r.pipeline(transaction=False)
        pending_jobs, entries = 0, []

        def flush() -> None:
            marks.execute()
            if len(seeds):
                seeds.execute()
            pipe.rpush(entries_key, *entries)
            pipe.expire(entries_key, ttl)
            pipe.execute()

        for conv in conversations:
            now = utcnow()
            if conv.history or conv.system_prompt:
                self.sessions.seed(conv.session_id, conv.history, conv.system_prompt, client=seeds, now=now,
                                   fleet=marks)
            self.machine.announce(conv.session_id, now, marks)
            for job in conv.jobs:
                self.machine.submit(job.job_id, job.session_id, encode_job(job), client=pipe, announce=False, now=now)
            entries.append(json.dumps([conv.custom_id, conv.session_id, *(j.job_id for j in conv.jobs)],
                                      separators=(",", ":")))
            pending_jobs += len(conv.jobs)
            if pending_jobs >= CHUNK:
                flush()
                pending_jobs, entries = 0, []
        if entries:
            flush()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key(info.batch_id), mapping={
            "batch_id": info.batch_id, "created_at": info.created_at.isoformat(),
            "total": info.total, "turns": info.turns, "unfinished": info.turns, "format": info.output_format,
        })
        pipe.expire(self.key(info.batch_id), ttl)
        pipe.expire(entries_key, ttl)
        pipe.execute()
        # Listed once complete; one key (its own slot on a cluster), so a transaction of its own.
        index = self.r.pipeline(transaction=True)
        index.zadd(self.keys.batches, {info.batch_id: info.created_at.timestamp() * 1000})
        index.zremrangebyrank(self.keys.batches, 0, -BATCHES_MAX - 1)
        index.execute()

    def recent(self, limit: int) -> list[BatchSummary]:
        """The newest ``limit`` listed batches, newest first; expired ones are dropped from the index."""
        ids = self.r.zrevrange(self.keys.batches, 0, limit - 1)
        pipe = self.r.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hmget(self.key(batch_id), ("created_at", "total", "turns", "unfinished", "finished_at"))
        out, gone = [], []
        for batch_id, (created_at, total, turns, unfinished, finished_at) in zip(ids, pipe.execute()):
            if created_at is None:
                gone.append(batch_id)
                continue
            # Finished (the count reached 0, or a read saw every turn finished): all of them, counts lost or not.
            done = int(turns) if finished_at else min(int(turns), int(turns) - int(unfinished or 0))
            out.append(BatchSummary(batch_id=batch_id, created_at=created_at, total=total, turns=turns,
                                    turns_finished=max(0, done), finished_at=finished_at))
        if gone:
            self.r.zrem(self.keys.batches, *gone)
        return out

    def meta(self, batch_id: str) -> dict[str, str]:
        meta = self.r.hgetall(self.key(batch_id)) if looks_like_id(batch_id) else None
        if not meta:
            raise BatchNotFound(f"unknown or expired batch: {id_text(batch_id)}")
        return meta

    def entries(self, batch_id: str) -> list[Entry]:
        raw: list[str] = []
        total = int(self.meta(batch_id)["total"])
        key = self.conversations_key(batch_id)
        for start in range(0, total, CHUNK):
            raw += self.r.lrange(key, start, start + CHUNK - 1)
        return [Entry(e[0], e[1], e[2:]) for e in map(json.loads, raw)]

    def job_fields(self, job_ids: list[str], *fields: str) -> list[list[str | None]]:
        out: list[list[str | None]] = []
        for chunk in _chunks(job_ids):
            pipe = self.r.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hmget(self.keys.job(job_id), fields)
            out += pipe.execute()
        return out

    def mark_finished(self, batch_id: str) -> datetime:
        finished_at = batch_expiry.mark_finished(self.r, self.keys, self.settings, batch_id)
        if finished_at is None:
            raise BatchNotFound(f"unknown or expired batch: {batch_id}")
        return datetime.fromisoformat(finished_at)

    def turns_finished(self, batch_id: str, turns: int) -> None:
        batch_expiry.turns_finished(self.r, self.keys, self.settings, batch_id, turns)


class BatchClient:
    """Submit, watch, collect and cancel batches of conversations, on top of a ``ChatClient``."""

    def __init__(self, client: ChatClient):
        self.client = client
        self.store = BatchStore(client)
        # A written batch's conversation list never changes, so polling reads it once.
        self._entries = lru_cache(maxsize=8)(self.store.entries)

    def submit(self, source: Source, skip_invalid: bool = False, agent: str | None = None,
               callback_url: str | None = None) -> BatchInfo:
        """Validate every line, then write every job and wake every conversation's session.

        Raises ``BatchInvalid`` (listing line numbers) before writing anything when a line is
        invalid, unless ``skip_invalid``; ``agent`` is the default for lines that name none;
        ``callback_url``, if given, receives every turn's job when it finishes.
        """
        batch_id = new_id()
        if callback_url is not None:  # once for the batch, rather than as every line's error
            check_destination(callback_url, self.client.settings.webhook_allow_private, resolve=False)
        max_chars = self.client.settings.max_message_chars
        p = plan(source, partial(self.client.build_job, batch_id=batch_id, callback_url=callback_url), agent,
                 check=lambda messages: validate_conversation(messages, max_chars))
        if p.errors and not skip_invalid:
            raise BatchInvalid(p.errors)
        if not p.conversations:
            raise InvalidRequest("the batch has no valid conversations" if p.errors else "the batch is empty")
        info = BatchInfo(batch_id=batch_id, created_at=utcnow(), total=len(p.conversations),
                         turns=sum(len(c.jobs) for c in p.conversations), skipped=p.errors, warnings=p.warnings,
                         output_format="openai" if all(c.openai for c in p.conversations) else "chatq")
        self.store.write(info, p.conversations)
        self.wake_all([(c.session_id, c.jobs[0].job_id) for c in p.conversations])
        return info

    def recent(self, limit: int = 50) -> list[BatchSummary]:
        """The namespace's newest batches (up to ``BATCHES_MAX`` are listed), newest first, with
        their progress as counted so far; ``status`` counts a batch's turns exactly."""
        return self.store.recent(limit)

    def wake_all(self, sessions: list[tuple[str, str]]) -> None:
        """One wake-up per conversation's session (with its first job), published in bulk."""
        try:
            self.client.wakeups.wake_many(sessions, self.client.namespace)
        except Exception:
            # The jobs are safely queued in Redis; a worker's sweeper wakes the sessions later.
            log.exception("could not publish all wake-ups; the sweeper will wake the rest")

    def _turn_statuses(self, entries: list[Entry]) -> list[list[str | None]]:
        flat = iter(s for (s,) in self.store.job_fields([j for e in entries for j in e.job_ids], "status"))
        return [list(islice(flat, len(e.job_ids))) for e in entries]

    def status(self, batch_id: str) -> BatchStatus:
        meta = self.store.meta(batch_id)
        entries = self._entries(batch_id)
        status = BatchStatus(batch_id=batch_id, created_at=meta["created_at"], finished_at=meta.get("finished_at"))
        for turns in self._turn_statuses(entries):
            status.add(conversation_status(turns))
            for s in turns:
                status.turns.add(s or "missing")
        if status.done and status.finished_at is None:
            status.finished_at = self.store.mark_finished(batch_id)
        return status

    def iter_results(self, batch_id: str) -> Iterator[ConversationResult]:
        """One result per conversation, in input order; unfinished ones show what has run so far."""
        self.store.meta(batch_id)
        for chunk in _chunks(self._entries(batch_id)):
            records = iter(self.store.job_fields([j for e in chunk for j in e.job_ids], "status", "result", "error"))
            for e in chunk:
                yield _result(e, list(islice(records, len(e.job_ids))))

    def results(self, batch_id: str) -> list[ConversationResult]:
        return list(self.iter_results(batch_id))

    def iter_output(self, batch_id: str, format: OutputFormat | None = None) -> Iterator[BaseModel]:
        """Result lines in ``format`` (the batch's own, ``BatchInfo.output_format``, if None): chatq's
        ``ConversationResult`` or OpenAI's Batch output (``OpenAIResultLine``, the last turn's)."""
        meta = self.store.meta(batch_id)
        if (format or meta.get("format", "chatq")) == "chatq":
            yield from self.iter_results(batch_id)
            return
        for chunk in _chunks(self._entries(batch_id)):
            records = self.store.job_fields([e.job_ids[-1] for e in chunk], "status", "result", "error", "finished_at")
            for e, record in zip(chunk, records):
                yield openai_result(e.custom_id, e.job_ids[-1], *record)

    def wait(self, batch_id: str, timeout: float | None = None,
             progress: Callable[[BatchStatus], None] | None = None, poll: float = 0.5) -> BatchStatus:
        """Poll until every turn has finished; ``progress`` sees each status read.

        A read costs one pipelined round trip per ``CHUNK`` turns, so the interval grows to twice
        the read's duration: polling a huge batch never keeps Redis busy.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            started = time.monotonic()
            status = self.status(batch_id)
            interval = max(poll, 2 * (time.monotonic() - started))
            if progress is not None:
                progress(status)
            if status.done:
                return status
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(f"batch {batch_id} still has {status.turns.queued} queued and "
                                  f"{status.turns.running} running turns after {timeout}s")
            time.sleep(interval if remaining is None else min(interval, remaining))

    def cancel(self, batch_id: str) -> CancelReport:
        """Cancel every still-queued turn; running and finished turns are left alone.

        Each conversation is cancelled from its last turn backwards, so a turn its worker starts
        meanwhile is never followed by a later turn: what gets cancelled is always a tail.
        """
        self.store.meta(batch_id)
        entries = self._entries(batch_id)
        cancelled = 0
        for e, turns in zip(entries, self._turn_statuses(entries)):
            for job_id, s in reversed(list(zip(e.job_ids, turns))):
                if s == "queued" and self.client.machine.cancel(job_id, e.session_id).outcome is CancelOutcome.cancelled:
                    cancelled += 1
        if cancelled:
            self.store.turns_finished(batch_id, cancelled)
        return CancelReport(batch_id=batch_id, cancelled=cancelled, status=self.status(batch_id))


_PROVIDER_HTTP = re.compile(r"ProviderHTTP(\d{3})")


def provider_response(e: JobError) -> ProviderErrorResponse | None:
    """The error response the provider answered, if it answered one: as the worker kept it, or, for a
    record written before workers kept it, its status from the error's type and chatq's message."""
    if e.provider_response is not None:
        return e.provider_response
    if m := _PROVIDER_HTTP.fullmatch(e.type):
        return ProviderErrorResponse(status_code=int(m.group(1)), error=ProviderErrorObject(message=e.message))
    return None


def openai_result(custom_id: str, job_id: str, status: str | None, result: str | None, error: str | None,
                  finished_at: str | None) -> OpenAIResultLine:
    """A job as a line of OpenAI's Batch output: its reply as a ``chat.completion`` body; the
    provider's HTTP error as the response it was (its status, ``body.error``), as at OpenAI; any other
    failure, a request that got no response, as ``error`` (chatq's error type as the code)."""
    line_id = f"batch_req_{job_id}"
    if status == "succeeded" and result:
        r = JobResult.model_validate_json(result)
        m = r.message
        message: dict = {"role": "assistant", "content": r.content, "refusal": None}
        if m is not None and m.tool_calls:
            message["tool_calls"] = [tc.model_dump() for tc in m.tool_calls]
        meta = m.metadata if m is not None else {}
        created = int(datetime.fromisoformat(finished_at).timestamp()) if finished_at else 0
        body = {"id": meta.get("completion_id") or f"chatcmpl-{job_id}", "object": "chat.completion",
                "created": created, "model": meta.get("model") or r.usage.model or "",
                "choices": [{"index": 0, "message": message, "finish_reason": meta.get("finish_reason") or "stop",
                             "logprobs": None}],
                "usage": {"prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens,
                          "total_tokens": r.usage.total_tokens}}
        return OpenAIResultLine(id=line_id, custom_id=custom_id, error=None,
                                response=OpenAIResponse(status_code=200, request_id=job_id, body=body))
    if status in ("failed", "cancelled") and error:
        e = JobError.model_validate_json(error)
        if response := provider_response(e):
            return OpenAIResultLine(id=line_id, custom_id=custom_id, error=None, response=OpenAIResponse(
                status_code=response.status_code, request_id=job_id, body=OpenAIErrorBody(error=response.error)))
        code, message_ = e.type, e.message
    elif status == "cancelled":
        code, message_ = "Cancelled", "cancelled before it ran"
    elif status is None:
        code, message_ = "Expired", "the job record expired after the result TTL"
    else:
        code, message_ = "NotFinished", f"the request is still {status}"
    return OpenAIResultLine(id=line_id, custom_id=custom_id, response=None,
                            error=OpenAIError(code=code, message=message_))


def _result(entry: Entry, records: list[list[str | None]]) -> ConversationResult:
    replies: list[str | None] = []
    usage = Usage()
    errors: dict[str, TurnError] = {}
    statuses = []
    for turn, (status, result, error) in enumerate(records, 1):
        statuses.append(status)
        reply = None
        if result and status == "succeeded":
            r = JobResult.model_validate_json(result)
            reply, usage = r.content, usage + r.usage
        elif status == "failed" and error:
            errors.setdefault("failed", TurnError(turn=turn, **json.loads(error)))
        elif status == "cancelled":
            errors.setdefault("cancelled", TurnError(turn=turn, type="Cancelled", message="cancelled before it ran"))
        elif status is None:
            errors.setdefault("missing", TurnError(turn=turn, type="Expired",
                                                   message="the job record expired after the result TTL"))
        replies.append(reply)
    error = next((errors[k] for k in ("failed", "cancelled", "missing") if k in errors), None)
    return ConversationResult(custom_id=entry.custom_id, session_id=entry.session_id,
                              status=conversation_status(statuses), replies=replies, usage=usage, error=error,
                              job_ids=entry.job_ids)
