"""The session runner: take a session's lease, run its FIFO head to tail, one job at a time.

Any number of wake-ups for a session may arrive anywhere; only the lease holder works, so a
session's turns run strictly in submission order while different sessions run in parallel. Every
session a process runs is a coroutine on its runtime's event loop (``runtime.py``): a turn waiting
on the provider costs a socket, not a thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from chatq.tasks.agent_profiles import AgentProfile, load_profiles
from chatq.tasks.batch_expiry import turns_finished
from chatq.tasks.conversation import conversation_problem
from chatq.tasks.job_store import decode_job
from chatq.tasks.keys import Keys
from chatq.tasks.models import CancelMode, Checkpoint, Job, JobError, JobResult, JobStatus, Message, Usage, utcnow
from chatq.tasks.redis_pool import UNREACHABLE
from chatq.tasks.session_machine import (AsyncSessionMachine, CommitOutcome, Committed, SessionMachine, Taken,
                                         TakeOutcome, emit_many)
from chatq.tasks.settings import Settings
from chatq.tasks.wakeups import WakePublisher
from chatq.tasks.webhooks import WebhookSender

from .agent import Agent, AgentError, Turn, tool_call_data, tool_result_data
from .event_writer import EventFlusher, EventWriter
from .lease_keeper import LeaseKeeper
from .metrics import WorkerMetrics
from .pacer import Pacer
from .provider import Provider
from .rate_limit import RateLimiter
from .tools import ToolRegistry
from .tracing import job_finished, job_span

log = logging.getLogger(__name__)


EARLY_STOP_SECONDS = 30.0
"""How long a stop request for a job this process is not (yet) running is remembered: one can
arrive while the take that starts the job is still on its way back."""


class Live:
    """A job running on this process: its agent's task, its event writer, and how it was asked to
    stop, if it was."""

    def __init__(self, task: asyncio.Task, namespace: str, events: EventWriter):
        self.task = task
        self.namespace = namespace
        self.events = events
        self.mode: CancelMode | None = None

    def stop(self, mode: str) -> None:
        if self.mode is None:
            self.mode = CancelMode.rollback if mode == CancelMode.rollback else CancelMode.keep
            self.task.cancel()


def _note_early(early: dict[str, tuple[str, float]], job_id: str, signal: str) -> None:
    """Keep a signal for a job not (yet) running here, which its start reads; a full table first
    drops what is older than ``EARLY_STOP_SECONDS``."""
    now = time.monotonic()
    if len(early) > 1000:
        for j in [j for j, (_, at) in early.items() if now - at >= EARLY_STOP_SECONDS]:
            del early[j]
    early[job_id] = (signal, now)


@dataclass(frozen=True)
class Space:
    """One namespace's keys and its session state machine."""

    keys: Keys
    machine: AsyncSessionMachine


class SessionRunner:
    """One per worker process, on its runtime's loop. ``r`` is the loop's asyncio client; ``sync_r``
    serves the few blocking steps (batch counts, webhooks, Celery wake-ups), run off the loop;
    ``events_r``, if given, the event flusher's own (``get_async_redis(..., socket_timeout=None)``)."""

    def __init__(self, settings: Settings, r: aioredis.Redis, sync_r: redis.Redis, wakeups: WakePublisher,
                 identity: str, max_connections: int = 1000, metrics: WorkerMetrics | None = None,
                 events_r: aioredis.Redis | None = None):
        self.settings = settings
        self.r = r
        self.sync_r = sync_r
        self.wakeups = wakeups
        self.identity = identity
        self._spaces: dict[str, Space] = {}
        home = self.space(settings.namespace)
        self.keys = home.keys
        self.lease_ms = int(settings.lease_seconds * 1000)
        self.leases = LeaseKeeper(SessionMachine(sync_r, self.keys, settings.result_ttl, settings.session_ttl,
                                                 settings.events_maxlen),
                                  self.lease_ms)
        self.metrics = metrics or WorkerMetrics()
        self._started: dict[str, float] = {}  # job ID: when this process started running it
        self.pacer = Pacer(settings.stream_flush_ms / 1000)
        self.events = EventFlusher(lambda writes: emit_many(events_r or r, writes), self.pacer,
                                   settings.redis_socket_timeout)
        self.provider = Provider(settings, max_connections, self.metrics)
        self.webhooks = WebhookSender(settings)
        limiter = RateLimiter(r, settings.namespace)
        self.profiles: dict[str, AgentProfile] = load_profiles(settings)
        self.agents = {
            name: Agent(p, ToolRegistry.from_specs(p.tools), self.provider, limiter)
            for name, p in self.profiles.items()
        }
        self.history_limit = max(a.history_limit for a in self.agents.values())
        self.stopping = False
        self.live: dict[str, Live] = {}
        self._early: dict[str, tuple[str, float]] = {}
        self._early_follows: dict[str, tuple[str, float]] = {}

    def space(self, namespace: str | None = None) -> Space:
        """The state machine of one namespace (a tenant's, or the default)."""
        ns = namespace or self.settings.namespace
        found = self._spaces.get(ns)
        if found is None:
            keys, s = Keys(ns), self.settings
            found = self._spaces[ns] = Space(keys, AsyncSessionMachine(self.r, keys, s.result_ttl, s.session_ttl,
                                                                          s.events_maxlen))
        return found

    def stop_job(self, job_id: str, mode: str) -> bool:
        """A job was asked to stop (``chatq.tasks.client.ChatClient.cancel``): if this process runs
        it, its agent task is cancelled -- a provider stream is closed, a back-off or tool wait cut
        short -- and the job ends ``cancelled``. Whether it runs here."""
        live = self.live.get(job_id)
        if live is None:
            _note_early(self._early, job_id, mode)
            return False
        live.stop(mode)
        return True

    def follow_job(self, job_id: str) -> bool:
        """A reader now follows the job's events (``chatq.tasks.events``): if this process runs it,
        its text is written as it streams from now on, starting with what came so far. Whether it
        runs here."""
        live = self.live.get(job_id)
        if live is None:  # its take may be on its way back: the job starts followed
            _note_early(self._early_follows, job_id, "follow")
            return False
        live.events.follow()
        return True

    async def check_signals(self) -> None:
        """Stop or follow the running jobs whose flags were set while this process could not hear
        (its listener was reconnecting): one pipelined read."""
        running = list(self.live)
        if not running:
            return
        pipe = self.r.pipeline(transaction=False)
        for job_id in running:
            pipe.hmget(self.space(self.live[job_id].namespace).keys.job(job_id), "cancel", "followed")
        for job_id, (mode, followed) in zip(running, await pipe.execute()):
            if followed:
                self.follow_job(job_id)
            if mode:
                self.stop_job(job_id, mode)

    async def blocking(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a blocking step (kombu, the blocking Redis client) in the loop's executor."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def wake(self, session_id: str, namespace: str) -> None:
        try:
            await self.blocking(self.wakeups.wake, session_id, namespace)
        except Exception:  # the session has queued work and no lease: the sweeper wakes it
            log.exception("could not publish a wake-up for session %s; the sweeper will", session_id)

    async def drain(self, session_id: str, namespace: str | None = None, job_id: str | None = None) -> int:
        """Run the session's jobs while this coroutine holds its lease; returns the jobs run.
        ``job_id``: the head expected (a wrong or missing guess costs one more round trip: the take
        says which job is)."""
        sp = self.space(namespace)
        if self.stopping:  # e.g. handed over just before a warm shutdown
            await self.wake(session_id, sp.keys.ns)
            return 0
        token = f"{self.identity}:{uuid.uuid4().hex}"
        lease_key = sp.keys.lease(session_id)
        acquire_ms = self.lease_ms  # the first take also takes the lease, if it is free
        head = job_id
        ran = 0
        try:
            while True:
                if self.stopping and not acquire_ms:
                    await self.release(sp, session_id, token)
                    return ran
                taken = await sp.machine.take(session_id, token, head, self.settings.max_attempts, self.identity,
                                              self.history_limit, acquire_ms)
                if taken.outcome in (TakeOutcome.released, TakeOutcome.lost):
                    if not ran and taken.outcome is TakeOutcome.released:
                        # Usual for a repeated wake-up; a fleet that keeps logging it for sessions its
                        # store never had shares its broker queue with another store's fleet.
                        log.debug("woken for session %s (namespace %s): nothing queued to take", session_id,
                                  sp.keys.ns)
                    return ran
                if acquire_ms:
                    acquire_ms = 0
                    self.leases.hold(lease_key, token)
                if taken.outcome is TakeOutcome.exhausted:
                    self.metrics.jobs.labels(taken.fields.get("agent", ""), "failed", "WorkerLost").inc()
                    await self.r.zadd(sp.keys.recent, {taken.job_id: utcnow().timestamp() * 1000})
                    await self.count_batch_turn(sp, taken.fields.get("batch_id"))
                    await self.notify(sp, taken.job_id)
                if taken.outcome is not TakeOutcome.run:
                    head = taken.next_job
                    continue
                try:
                    committed = await self.run_job(sp, decode_job(taken.fields), taken, token)
                finally:  # a run cut short by an outage has no commit to count
                    self._started.pop(taken.job_id or "", None)
                if committed.outcome is not CommitOutcome.ok:
                    return ran + (committed.outcome is CommitOutcome.released)
                ran += 1
                head = committed.next_job
        except UNREACHABLE as exc:
            # Nothing half-done survives an outage: the commit is one script, so the job either
            # committed or is still queued. The lease runs out and whoever takes the session next
            # (the sweeper wakes it) runs what is left, from the job's last checkpoint.
            log.warning("Redis unreachable while running session %s (%s); it resumes once Redis answers "
                        "and its lease expires", session_id, exc)
            return ran
        finally:
            self.leases.drop(lease_key, token)

    async def release(self, sp: Space, session_id: str, token: str) -> None:
        """On warm shutdown: give the rest of the session's FIFO to another worker right away."""
        if await sp.machine.release(session_id, token):
            await self.wake(session_id, sp.keys.ns)

    async def run_job(self, sp: Space, job: Job, taken: Taken, token: str) -> Committed:
        """Run one job and commit it: ``ok`` (with the next head), ``released`` (it was the last
        queued: the lease is given up with the commit) or why the commit was refused (the lease was
        lost). Traced, when traces are on: the job's span is current while it runs (``tracing``)."""
        with job_span(job, self.identity):
            return await self._run_job(sp, job, taken, token)

    async def _run_job(self, sp: Space, job: Job, taken: Taken, token: str) -> Committed:
        sid = job.session_id
        self._started[job.job_id] = time.perf_counter()
        if job.attempts == 1:
            self.metrics.queue_wait.labels(job.agent).observe(max(0.0, (utcnow() - job.created_at).total_seconds()))
        checkpoint, history = taken.checkpoint, taken.history
        keep: int | None = None  # a regenerated reply: the history is cut back to its user message
        if job.op is not None and job.op.kind == "fork":
            return await self._fork(sp, job, taken, token)
        if job.op is not None:  # regenerate
            last = next((i for i in range(len(history) - 1, -1, -1) if history[i].role == "user"), None)
            if last is None:
                error = JobError(type="NothingToRegenerate", message=f"session {sid} has no user message "
                                 f"among its last {len(history)} to answer again")
                return await self._commit_failure(sp, job, taken, token, error, Usage())
            keep = taken.history_length - (len(history) - last)
            history, asked = history[:last], history[last]
        if checkpoint:
            turn = Turn(checkpoint.messages, checkpoint.usage)
        elif keep is not None:
            turn = Turn([asked])
        else:
            turn = Turn([Message(role="user", content=job.message, metadata={**job.metadata, "job_id": job.job_id})])
        turn.system_prompt = taken.system_prompt
        live: Live | None = None
        followed = (self.settings.stream_text == "always" or taken.fields.get("followed") == "1"
                    or self._early_follows.pop(job.job_id, None) is not None)
        events = self.events.writer(sp.machine, sid, job.job_id, token,
                                    on_stop=lambda mode: live.stop(mode) if live else None, followed=followed)
        if checkpoint and job.attempts > 1:
            replay(turn, events)

        async def save(t: Turn) -> None:
            await sp.machine.save_checkpoint(sid, job.job_id, token, Checkpoint(messages=t.messages, usage=t.usage))

        async def on_retry(err: JobError, delay: float) -> None:
            pipe = self.r.pipeline(transaction=False)
            pipe.hincrby(sp.keys.job(job.job_id), "provider_retries", 1)
            pipe.hset(sp.keys.job(job.job_id), "last_error", err.model_dump_json())
            try:
                await pipe.execute()
            except UNREACHABLE as exc:  # bookkeeping only: the provider retry goes on without it
                log.warning("could not record provider retry of job %s (%s)", job.job_id, exc)

        agent = self.agents.get(job.agent)

        async def run() -> Turn:
            if agent is None:
                raise AgentError("UnknownAgent", f"this worker has no agent named {job.agent!r}")
            return await agent.run(history[-agent.history_limit:], turn, save=save, on_retry=on_retry, events=events,
                                   params=job.params)

        live = self.live[job.job_id] = Live(asyncio.ensure_future(run()), sp.keys.ns, events)
        early = self._early.pop(job.job_id, None)
        if job.cancel or early:
            live.stop(job.cancel or early[0])  # type: ignore[index]
        try:
            turn = await live.task
        except asyncio.CancelledError:
            if live.mode is None:  # not a stop: this coroutine itself is being cancelled
                live.task.cancel()
                raise
            return await self._commit_stopped(sp, job, taken, token, turn, live.mode, await events.settle(), keep)
        except AgentError as exc:
            return await self._commit_failure(sp, job, taken, token, exc.error, turn.usage, await events.settle())
        except UNREACHABLE:  # an outage is not the job's fault: leave it queued (see drain)
            raise
        except Exception as exc:  # a bug must fail one job, never wedge the session
            log.exception("job %s crashed", job.job_id)
            error = JobError(type=type(exc).__name__, message=str(exc))
            return await self._commit_failure(sp, job, taken, token, error, turn.usage, await events.settle())
        finally:
            self.live.pop(job.job_id, None)
        rest = await events.settle()
        for m in turn.messages:
            m.metadata.setdefault("job_id", job.job_id)
            if keep is not None and m.role != "user":
                m.metadata["regenerated"] = True
        final = turn.messages[-1]
        result = JobResult(content=final.content, message=final, usage=turn.usage, tool_calls=turn.tool_rounds,
                           parsed=turn.parsed)
        committed = await sp.machine.commit(sid, job.job_id, token, JobStatus.succeeded.value, turn.messages,
                                            turn.usage, taken.created_at, result_json=result.model_dump_json(),
                                            events=rest, keep=keep)
        return await self._committed(sp, job, committed, "succeeded", "", turn.usage)

    async def _commit_stopped(self, sp: Space, job: Job, taken: Taken, token: str, turn: Turn,
                              mode: CancelMode, events: list[tuple[str, str]], keep: int | None) -> Committed:
        """End a job that was asked to stop: ``cancelled``, the history keeping the turn so far
        (``keep``: the user's message, finished tool steps, the partial reply marked ``cancelled``)
        or nothing of it (``rollback``); the result holds the partial reply, if any."""
        messages = [] if mode is CancelMode.rollback else turn.stopped({"cancelled": True})
        keep = keep if messages else None  # a rolled-back regenerate leaves the old reply
        for m in messages:
            m.metadata.setdefault("job_id", job.job_id)
        partial = "".join(turn.partial) or None
        last = messages[-1] if messages and messages[-1].role == "assistant" else None
        result = JobResult(content=partial, message=last, usage=turn.usage,
                           tool_calls=turn.tool_rounds) if last is not None else None
        error = JobError(type="Cancelled", message="the job was stopped on request"
                         + (" and its turn rolled back" if mode is CancelMode.rollback else ""))
        committed = await sp.machine.commit(
            job.session_id, job.job_id, token, JobStatus.cancelled.value, messages, turn.usage, taken.created_at,
            result_json=result.model_dump_json() if result else "", error_json=error.model_dump_json(),
            events=events, keep=keep)
        if committed.outcome in (CommitOutcome.ok, CommitOutcome.released):
            self.metrics.cancels.labels(mode.value).inc()
        return await self._committed(sp, job, committed, "cancelled", "Cancelled", turn.usage)

    async def _fork(self, sp: Space, job: Job, taken: Taken, token: str) -> Committed:
        """Copy the first ``at`` messages (and the edited message, if any) into the new session,
        under this session's lease so they are the history its earlier jobs left."""
        op = job.op
        assert op is not None and op.at is not None and op.into is not None
        copied = await sp.machine.history(job.session_id, op.at)
        messages = copied + ([op.replace] if op.replace else [])
        error = None
        if len(copied) < op.at:
            error = JobError(type="ForkOutOfRange", message=f"session {job.session_id} has {len(copied)} messages; "
                             f"cannot copy {op.at}")
        elif messages and (problem := conversation_problem([m.to_provider() for m in messages])):
            error = JobError(type="InvalidFork", message=f"the first {op.at} messages do not end a conversation a "
                             f"provider accepts: {problem[0]}")
        elif not await sp.machine.seed(op.into, messages, taken.system_prompt, job.job_id):
            error = JobError(type="SessionExists", message=f"session {op.into} already has history or queued work")
        if error is not None:
            return await self._commit_failure(sp, job, taken, token, error, Usage())
        result = JobResult(content=op.into, usage=Usage())
        committed = await sp.machine.commit(job.session_id, job.job_id, token, JobStatus.succeeded.value, [],
                                            Usage(), taken.created_at, result_json=result.model_dump_json())
        return await self._committed(sp, job, committed, "succeeded", "", Usage())

    async def _commit_failure(self, sp: Space, job: Job, taken: Taken, token: str, error: JobError,
                              usage: Usage, events: list[tuple[str, str]] = ()) -> Committed:  # type: ignore[assignment]
        committed = await sp.machine.commit(job.session_id, job.job_id, token, JobStatus.failed.value, [], usage,
                                            taken.created_at, error_json=error.model_dump_json(), events=events)
        return await self._committed(sp, job, committed, "failed", error.type, usage)

    async def _committed(self, sp: Space, job: Job, committed: Committed, status: str, error: str,
                         usage: Usage) -> Committed:
        started = self._started.pop(job.job_id, None)
        if committed.outcome not in (CommitOutcome.ok, CommitOutcome.released):
            log.warning("job %s not committed (%s): another worker owns session %s now",
                        job.job_id, committed.outcome, job.session_id)
            return committed
        job_finished(status, error)
        m = self.metrics
        m.jobs.labels(job.agent, status, error).inc()
        if started is not None:
            m.run_time.labels(job.agent, status).observe(time.perf_counter() - started)
        if usage.total_tokens:
            model = usage.model or ""
            m.tokens.labels(job.agent, model, "prompt").inc(usage.prompt_tokens)
            m.tokens.labels(job.agent, model, "completion").inc(usage.completion_tokens)
        await self.count_batch_turn(sp, job.batch_id)
        if job.callback_url:
            await self.notify(sp, job.job_id)
        return committed

    async def count_batch_turn(self, sp: Space, batch_id: str | None) -> None:
        """A batch job is final: count it down on its batch, which keeps the batch's record alive
        and expires it after the last one (``chatq.tasks.batch_expiry``). Never fails the session:
        a lost count only delays the batch's expiry."""
        if not batch_id:
            return
        try:
            await self.blocking(turns_finished, self.sync_r, sp.keys, self.settings, batch_id)
        except redis.RedisError:
            log.warning("could not count a finished turn of batch %s", batch_id, exc_info=True)

    async def notify(self, sp: Space, job_id: str | None) -> None:
        """Queue the job's webhook, if it asked for one; never blocks or fails the session."""
        if not job_id:
            return
        try:
            await self.blocking(self.webhooks.request_delivery, self.sync_r, sp.keys, job_id)
        except Exception:
            log.exception("could not queue the webhook for job %s", job_id)


def replay(turn: Turn, events: EventWriter) -> None:
    """A restarted job resumes from its checkpoint: its finished tool steps are told again, after
    ``job.restarted``, so a reader that dropped what it showed has the whole turn."""
    for m in turn.messages:
        if m.role == "assistant" and m.tool_calls:
            for tc in m.tool_calls:
                events.event("tool.call", {**tool_call_data(tc), "replayed": True})
        elif m.role == "tool":
            events.event("tool.result", {**tool_result_data(m), "replayed": True})
