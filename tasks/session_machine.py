"""The session state machine: per-session order in Redis, one Lua script per transition.

A session has a FIFO of job IDs and a lease on its head. Celery only delivers wake-ups ("session S
has work"), and only when no worker process waiting with room can be handed the session directly
(``handoff_give``; ``chatq.worker.handoff`` is the waiting side); whoever holds the lease runs the
FIFO head to tail, one job at a time. Each transition is one script in ``lua/``, so a job's history
append, its result and its removal from the FIFO commit together, fenced by the lease token: a
worker that lost its lease can never append a turn.

**One hash slot per call.** A script touches one session's keys and its jobs' keys, which share
the session's bucket tag (``keys.py``). The namespace's fleet indexes -- ``pending`` (sessions
given work, the sweeper's input) and ``sessions`` (the listing) -- live under the fleet tag, so
they are kept by separate commands in the same pipelines, ordered so that no crash or race loses
work or strands a session:

* **submit** is one pipeline, ``[announce (fleet), submit (session)]``: the pending mark comes
  first, so a producer dying between the two leaves a mark without work (the sweeper drops it),
  never work without a mark. On a Redis Cluster the two slots may live on different nodes, and
  commands to different nodes are not ordered with each other even in one pipeline, so there the
  mark is its own round trip, made before the submit is sent. When the Celery broker is the same
  standalone Redis (chatq's default), the submit script wakes a session it creates itself -- a
  hand-off if a waiting process has room, else the wake-up message pushed onto the Celery queue --
  so a new session costs the one round trip an existing one does. Otherwise a ``created`` session
  costs a second call: ``handoff_give`` if the pipeline saw workers registered for one, else (or if
  it gave nothing) a Celery wake-up; a producer dying before either leaves a marked session the
  sweeper wakes.
* **Nothing on the hot path removes a pending mark**: a removal racing a concurrent submit could
  drop that submit's fresh mark. The sweeper alone does: it reads marks older than two intervals
  with their scores, looks at each session's FIFO and lease, and drops the idle ones by
  compare-and-delete on the score it read (the ``sweep`` script). ``announce`` scores only grow
  (Redis's clock, +1 ms on a tie), so a submit landing after the sweeper looked always keeps its mark.
* **Re-wakes back off, out of the hot path.** The same script keeps, in ``woken`` (fleet tag), the
  stalled sessions the sweeper woke and in what state (head job and its attempts): found stalled
  in that state again, a session is re-woken only after a doubling back-off. Nothing else writes
  ``woken``: what resets a back-off is the state changing (a take that runs the head counts an
  attempt, a commit moves the head on) or a look finding the session held or idle, so a newly
  stalled session's first wake stays as prompt as the sweep (a dead worker's: lease + 2 intervals).
  An entry goes when a look finds its session idle or held, so ``woken`` never outgrows ``pending``.
* **The listing** gains an entry in ``announce`` (if absent, before the session exists: a crash
  leaves an entry without a session, which pruning drops), and every commit re-asserts it (its
  pipeline is ``[ZADD sessions, ZADD recent, commit]``; no order among them matters: the listing's
  entry is there since the announce, and a crash after the commit alone costs the job its place in
  ``recent``, which only ``jobs list`` and ``top`` read, so a cluster sends them as one pipeline). Pruning (``SessionStore``) drops entries whose session
  is gone -- expired or deleted -- by the same compare-and-delete. The one race it cannot see, a
  session re-created between the pruner's look and its delete while the old entry's score still
  stands, leaves the new session unlisted until its next commit.

**Retention.** While a session has work queued or running its hash and history never expire;
the script that empties its FIFO (a commit, a cancel, a take that pops a finished or exhausted
job) gives them its TTL: its own (set on create or submit), else ``CHATQ_SESSION_TTL``; none keeps
them. A submit takes the TTL off again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

import redis
import redis.asyncio as aioredis

from .keys import Keys, bucket, is_id
from .models import Checkpoint, JobError, Message, Usage, utcnow
from .redis_pool import is_cluster
from .scripts import load

COUNT_CHUNK = 500
"""Sessions per pipelined read when counting active jobs."""
RECENT_MAX = 10_000
"""Finished jobs a namespace's ``recent`` index keeps (the sweeper trims it)."""
EVENTS_MAXLEN = 10_000
"""Entries a job's event log is trimmed to (about): far more than a turn writes, with deltas coalesced."""
INTERRUPT_TRIES = 10
"""Reads of a session's FIFO an interrupting submit makes before giving up on a FIFO that keeps moving."""


class SubmitOutcome(StrEnum):
    created = "created"              # alone and unheld: the caller wakes it (Celery)
    handed = "handed"                # alone and unheld, given to a waiting worker process: no wake-up
    woken = "woken"                  # alone and unheld, its Celery wake-up pushed by the submit itself
    held = "held"                    # alone, but a lease holder will reach it before it can release
    queued_behind = "queued-behind"  # an earlier job's holder or wake-up will reach it
    existing = "existing"            # a job with this ID exists (idempotent resubmission)
    busy = "busy"                    # on_busy="reject" and the session has work: nothing written
    stale = "stale"                  # interrupting: the FIFO moved since it was read; nothing written


class TakeOutcome(StrEnum):
    run = "run"              # the head job, started: run it, then commit
    released = "released"    # nothing queued: the lease is given up
    lost = "lost"            # another worker holds the lease (or the caller's expired)
    head = "head"            # the head is another job than the caller named: take again naming it
    skip = "skip"            # the head's record is gone or finished: popped
    exhausted = "exhausted"  # the head failed after max_attempts runs: popped


class CommitOutcome(StrEnum):
    ok = "ok"                    # committed; the lease holder goes on with the next head
    released = "released"        # committed, the FIFO is empty: the lease went with it
    lost = "lost"                # refused: not the lease holder
    moved = "moved"              # refused: not the FIFO's head
    not_running = "not-running"  # refused: the job is not running


class CancelOutcome(StrEnum):
    cancelled = "cancelled"    # it was queued: done
    requested = "requested"    # it is running: its worker stops it (or the job's next take does)
    unknown = "unknown"
    finished = "finished"      # it had finished: nothing changed


class Cancelled(NamedTuple):
    outcome: CancelOutcome
    status: str | None = None  # the job's status when finished


class Submitted(NamedTuple):
    outcome: SubmitOutcome
    cancelled: list[str] = []  # interrupting: the queued jobs it cancelled


class Committed(NamedTuple):
    outcome: CommitOutcome
    next_job: str | None = None  # with ``ok``: the new head, which the next take names


@dataclass
class Taken:
    """The lease holder's next step. With ``run``: the job's fields, its checkpoint, the history's
    tail and the session's ``created_at`` (which the commit re-lists it under); with ``head``,
    ``skip`` and ``exhausted``: ``next_job``, the head the next take names; with ``exhausted``,
    the job's ``batch_id`` in ``fields`` if it has one (its batch counts it as finished)."""

    outcome: TakeOutcome
    job_id: str | None = None
    next_job: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    history: list[Message] = field(default_factory=list)
    created_at: str | None = None
    history_length: int = 0  # the whole history's, of which ``history`` is the tail
    system_prompt: str | None = None  # the session's own, if it has one


def listing_score(created_at: str) -> float:
    """A session's score in the listing: its creation time, in seconds."""
    return datetime.fromisoformat(created_at).timestamp()


def ttl_arg(ttl: int | None) -> str:
    """A retention as scripts take it: '' leaves the session's as it is."""
    return "" if ttl is None else str(int(ttl))


class Calls:
    """The worker-side transitions' KEYS and ARGV, built once for the blocking machine (producers,
    tests, tools) and the asyncio one (the worker runtime): each call, and how its reply reads."""

    def __init__(self, keys: Keys, result_ttl: int, default_ttl: str, events_maxlen: int = EVENTS_MAXLEN):
        self.keys = keys
        self.result_ttl = result_ttl
        self.default_ttl = default_ttl
        self.maxlen = events_maxlen

    def take(self, session_id: str, token: str, job_id: str | None, max_attempts: int, worker: str,
             history_limit: int, acquire_ms: int) -> tuple[list[str], list[object]]:
        k = self.keys
        if job_id is not None and (not is_id(job_id) or job_id[:4] != bucket(session_id)):
            job_id = None  # not one of this session's: ask which is
        keys = [k.fifo(session_id), k.lease(session_id), k.session(session_id), k.messages(session_id)]
        if job_id is not None:
            keys += [k.job(job_id), k.checkpoint(job_id), k.events(job_id)]
        error = JobError(
            type="WorkerLost",
            message=f"the job's worker died {max_attempts} times; giving up so the session can move on",
            retryable=False,
        )
        return keys, [token, acquire_ms, job_id or "", utcnow().isoformat(), max_attempts, self.result_ttl,
                      error.model_dump_json(), worker, history_limit,
                      k.done_channel(job_id) if job_id else "", self.default_ttl, self.maxlen]

    def checkpoint(self, session_id: str, job_id: str, token: str,
                   checkpoint: Checkpoint) -> tuple[list[str], list[object]]:
        return [self.keys.lease(session_id), self.keys.checkpoint(job_id)], [token, checkpoint.model_dump_json()]

    def commit(self, session_id: str, job_id: str, token: str, status: str, messages: list[Message],
               usage: Usage, result_json: str, error_json: str,
               events: list[tuple[str, str]] = (),  # type: ignore[assignment]
               keep: int | None = None) -> tuple[list[str], list[object]]:
        k = self.keys
        return ([k.job(job_id), k.fifo(session_id), k.lease(session_id), k.session(session_id),
                 k.messages(session_id), k.checkpoint(job_id), k.events(job_id)],
                [token, job_id, utcnow().isoformat(), self.result_ttl, status, result_json, error_json,
                 usage.prompt_tokens, usage.completion_tokens, usage.total_tokens, usage.model or "",
                 k.done_channel(job_id), self.default_ttl, self.maxlen, "" if keep is None else keep, len(events),
                 *(x for e in events for x in e),
                 *(m.model_dump_json() for m in messages)])

    def seed(self, session_id: str, messages: list[Message], system_prompt: str | None, ttl: int | None,
             now: datetime, origin: str = "") -> tuple[list[str], list[object]]:
        """A session made with a history of its own (``seed.lua``); ``origin``: the fork job making it."""
        k = self.keys
        return ([k.session(session_id), k.messages(session_id), k.fifo(session_id)],
                [now.isoformat(), ttl_arg(ttl), self.default_ttl, system_prompt or "", origin,
                 *(m.model_dump_json() for m in messages)])

    def emit(self, session_id: str, job_id: str, token: str,
             events: list[tuple[str, str]]) -> tuple[list[str], list[object]]:
        """Events (type, JSON data) of a running job, fenced by the lease."""
        k = self.keys
        return ([k.lease(session_id), k.job(job_id), k.events(job_id)],
                [token, self.maxlen, *(x for event in events for x in event)])

    def release(self, session_id: str, token: str) -> tuple[list[str], list[object]]:
        return [self.keys.lease(session_id), self.keys.fifo(session_id)], [token]


def read_take(res: list) -> Taken:
    outcome = TakeOutcome(res[0])
    if outcome is TakeOutcome.head:
        return Taken(outcome, next_job=res[1])
    if outcome is not TakeOutcome.run:
        batch = {"batch_id": res[3]} if len(res) > 3 and res[3] else {}
        return Taken(outcome, res[1] if len(res) > 1 else None, (res[2] or None) if len(res) > 2 else None, batch)
    n = int(res[6])
    fields = dict(zip(res[7:7 + n:2], res[8:7 + n:2]))
    return Taken(outcome, res[1], None, fields,
                 Checkpoint.model_validate_json(res[2]) if res[2] else None,
                 [Message.model_validate_json(m) for m in res[7 + n:]], res[3], int(res[4]), res[5] or None)


def read_emit(res: list) -> tuple[bool, str]:
    """Whether the events were written (the lease still held), and the job's stop mode or ''."""
    return (res[0] == "ok", res[2] if res[0] == "ok" else "")


def read_commit(res: list) -> Committed:
    return Committed(CommitOutcome(res[0]), res[1] if len(res) > 1 else None)


def read_release(res: object) -> int | None:
    left = int(res)  # type: ignore[call-overload]
    return None if left < 0 else left


class SessionMachine:
    def __init__(self, r: redis.Redis, keys: Keys, result_ttl: int = 86400, session_ttl: int | None = None,
                 events_maxlen: int = EVENTS_MAXLEN, fleet: Keys | None = None):
        self.r = r
        self.keys = keys
        self.fleet = fleet or keys  # whose cancel channel the fleet's workers listen on
        self.result_ttl = result_ttl
        self.default_ttl = str(session_ttl or 0)
        self.calls = Calls(keys, result_ttl, self.default_ttl, events_maxlen)
        self.cluster = is_cluster(r)
        self._announce = load(r, "announce")
        self._submit = load(r, "submit")
        self._give = load(r, "handoff_give")
        self._cancel = load(r, "cancel")
        self._take = load(r, "take")
        self._checkpoint = load(r, "checkpoint")
        self._emit = load(r, "emit")
        self._commit = load(r, "commit")
        self._release = load(r, "release")
        self._renew = load(r, "renew")
        self._sweep = load(r, "sweep")

    # producer side
    def announce(self, session_id: str, now: datetime, client: redis.client.Pipeline) -> None:
        """Queue the fleet's side of a submit into ``client``, before the submits of the session."""
        self._announce(keys=[self.keys.pending, self.keys.sessions], args=[session_id, now.timestamp()],
                       client=client)

    def submit(
        self,
        job_id: str,
        session_id: str,
        fields: dict[str, str],
        on_busy: str = "enqueue",
        session_ttl: int | None = None,
        client: redis.client.Pipeline | None = None,
        announce: bool = True,
        hand_to: Keys | None = None,
        queue: str = "",
        now: datetime | None = None,
        wake: str = "",
    ) -> SubmitOutcome | None:
        """Append a job to its session's FIFO, creating the session on first use.

        With ``client`` (a pipeline) the commands are only queued into it (and ``announce=False``
        leaves out the fleet's side, for a caller that queued ``announce`` once for the session,
        with the same ``now``) and None is returned; the caller wakes the sessions. Otherwise one round trip, and for a
        ``created`` session with ``hand_to`` (the fleet's keys), when that round trip saw workers
        registered for hand-offs on Celery queue ``queue``, a second: hand it to one with room
        (``handed``); else the caller publishes a wake-up.

        ``wake`` (with ``hand_to`` and ``queue``; a standalone Redis that is also the Celery broker):
        the session's wake-up message, for the script to hand over or push itself when the session
        is ``created`` (``handed`` or ``woken``), so a new session costs the one round trip an
        existing one does.
        """
        pipe = client if client is not None else self.r.pipeline(transaction=False)
        self._queue_submit(pipe, job_id, session_id, fields, on_busy, session_ttl, announce, now or utcnow(),
                           wake=self._wake_keys(wake, hand_to, queue, session_id, job_id))
        if client is not None:
            return None
        return self._submitted(pipe, session_id, job_id, None if wake else hand_to, queue).outcome

    def interrupt(self, job_id: str, session_id: str, fields: dict[str, str], mode: str,
                  session_ttl: int | None = None, hand_to: Keys | None = None, queue: str = "",
                  wake: str = "") -> Submitted:
        """``submit`` with on_busy ``interrupt`` or ``rollback``: in the same step, the session's
        running job is asked to stop (``keep`` or ``rollback``) and its queued ones are cancelled.
        The script must name every job's keys, so the FIFO is read first; if it moved meanwhile
        the script writes nothing and it is read again."""
        for _ in range(INTERRUPT_TRIES):
            stopping = self.r.lrange(self.keys.fifo(session_id), 0, -1)
            pipe = self.r.pipeline(transaction=False)
            self._queue_submit(pipe, job_id, session_id, fields, mode, session_ttl, True, utcnow(), stopping,
                               self._wake_keys(wake, hand_to, queue, session_id, job_id))
            submitted = self._submitted(pipe, session_id, job_id, None if wake else hand_to, queue)
            if submitted.outcome is not SubmitOutcome.stale:
                return submitted
        return submitted

    def _wake_keys(self, wake: str, hand_to: Keys | None, queue: str, session_id: str,
                   job_id: str) -> tuple[list[str], list[str]]:
        """The submit script's extra keys and arguments that let it wake a created session itself."""
        if not wake:
            return [], ["", ""]
        if hand_to is None or not queue or self.cluster:
            raise ValueError("a submit can push its own wake-up only on a standalone Redis, given the fleet's keys and queue")
        return [hand_to.idle(queue), hand_to.handed(queue), queue], [f"{self.keys.ns} {session_id} {job_id}", wake]

    def _queue_submit(self, pipe: redis.client.Pipeline, job_id: str, session_id: str, fields: dict[str, str],
                      on_busy: str, session_ttl: int | None, announce: bool, now: datetime,
                      stopping: list[str] = (),  # type: ignore[assignment]
                      wake: tuple[list[str], list[str]] = ([], ["", ""])) -> None:
        if not is_id(job_id) or job_id[:4] != bucket(session_id):
            raise ValueError(f"job ID {job_id!r} does not carry session {session_id!r}'s bucket (keys.new_job_id)")
        k = self.keys
        if announce:  # on a cluster the mark must land first: its own round trip (see the module)
            self.announce(session_id, now, self.r if self.cluster else pipe)
        keys = [k.job(job_id), k.fifo(session_id), k.lease(session_id), k.session(session_id), k.messages(session_id)]
        for other in stopping:
            keys += [k.job(other), k.events(other)]
        wake_keys, wake_args = wake
        self._submit(
            keys=keys + wake_keys,
            args=[job_id, on_busy, now.isoformat(), ttl_arg(session_ttl), self.result_ttl, self.calls.maxlen,
                  k.done_channel(""), self.fleet.cancel_channel, len(stopping), *wake_args, *stopping,
                  *(x for pair in fields.items() for x in pair)],
            client=pipe,
        )

    def _submitted(self, pipe: redis.client.Pipeline, session_id: str, job_id: str, hand_to: Keys | None,
                   queue: str) -> Submitted:
        if hand_to is None:
            res = pipe.execute()[-1]
            return Submitted(SubmitOutcome(res[0]), res[1:])
        # Whether any worker is registered for hand-offs, in the same round trip: in a busy fleet
        # none is, and a new session then costs no second call that could only give nothing. Expired
        # registrations still count here, so this errs towards trying the hand-off.
        pipe.zcard(hand_to.idle(queue))
        *_, res, waiting = pipe.execute()
        outcome = SubmitOutcome(res[0])
        if outcome is SubmitOutcome.created and waiting:
            item = f"{self.keys.ns} {session_id} {job_id}"
            if self._give(keys=[hand_to.idle(queue), hand_to.handed(queue)], args=[item]):
                outcome = SubmitOutcome.handed
        return Submitted(outcome, res[1:])

    def cancel(self, job_id: str, session_id: str, mode: str = "keep") -> Cancelled:
        """Cancel a queued job, or ask a running one to stop (``keep`` its turn so far, or ``rollback``)."""
        k = self.keys
        res = self._cancel(
            keys=[k.job(job_id), k.fifo(session_id), k.session(session_id), k.messages(session_id), k.events(job_id)],
            args=[job_id, utcnow().isoformat(), self.result_ttl, k.done_channel(job_id), self.default_ttl,
                  self.calls.maxlen, mode, self.fleet.cancel_channel],
        )
        return Cancelled(CancelOutcome(res[0]), res[1] if len(res) > 1 else None)

    # worker side
    def take(self, session_id: str, token: str, job_id: str | None, max_attempts: int, worker: str = "",
             history_limit: int = 0, acquire_ms: int = 0) -> Taken:
        """Start the head job ``job_id`` (one round trip: the job, its checkpoint and the history's
        tail come back with it); if the head is another job, or ``job_id`` is None, the answer is
        ``head`` with ``next_job`` to name next time.

        ``acquire_ms``: first take the session's lease for that long if nobody holds it; ``lost``
        means another worker holds it (or, without ``acquire_ms``, that this one no longer does).
        """
        keys, args = self.calls.take(session_id, token, job_id, max_attempts, worker, history_limit, acquire_ms)
        return read_take(self._take(keys=keys, args=args))

    def save_checkpoint(self, session_id: str, job_id: str, token: str, checkpoint: Checkpoint) -> bool:
        keys, args = self.calls.checkpoint(session_id, job_id, token, checkpoint)
        return bool(self._checkpoint(keys=keys, args=args))

    def emit(self, session_id: str, job_id: str, token: str, events: list[tuple[str, str]]) -> tuple[bool, str]:
        """Append a running job's events (type, JSON data): whether written, and its stop mode or ''."""
        keys, args = self.calls.emit(session_id, job_id, token, events)
        return read_emit(self._emit(keys=keys, args=args))

    def commit(
        self,
        session_id: str,
        job_id: str,
        token: str,
        status: str,
        messages: list[Message],
        usage: Usage,
        created_at: str | None = None,
        result_json: str = "",
        error_json: str = "",
        events: list[tuple[str, str]] = (),  # type: ignore[assignment]
        keep: int | None = None,
    ) -> Committed:
        """Append the turn, store the result and pop the job, fenced by the lease token.

        ``created_at`` (from the take) re-lists the session in the same round trip; ``events``
        (type, JSON data) go into the job's log before its terminal event.
        """
        pipe = self.r.pipeline(transaction=False)
        if created_at:
            pipe.zadd(self.keys.sessions, {session_id: listing_score(created_at)})
        pipe.zadd(self.keys.recent, {job_id: utcnow().timestamp() * 1000})
        keys, args = self.calls.commit(session_id, job_id, token, status, messages, usage, result_json, error_json,
                                       events, keep)
        self._commit(keys=keys, args=args, client=pipe)
        return read_commit(pipe.execute()[-1])

    def release(self, session_id: str, token: str) -> int | None:
        """Give up the lease with work still queued (warm shutdown): the jobs left, None if lost."""
        keys, args = self.calls.release(session_id, token)
        return read_release(self._release(keys=keys, args=args))

    def renew(self, leases: list[tuple[str, str]], lease_ms: int) -> list[str]:
        """Extend held leases (lease key, token), one call each in one pipeline; returns the keys lost."""
        if not leases:
            return []
        pipe = self.r.pipeline(transaction=False)
        for key, token in leases:
            self._renew(keys=[key], args=[token, lease_ms], client=pipe)
        return [key for (key, _), kept in zip(leases, pipe.execute()) if not kept]

    # the sweeper's side
    def redis_ms(self) -> int:
        seconds, micros = self.r.time()
        return seconds * 1000 + micros // 1000

    def sweep(self, older_than_s: float, max_backoff_s: float, limit: int = 1000,
              now_ms: int | None = None) -> list[str]:
        """Sessions with queued work, no lease and no recent mark that need a wake-up now.

        Marks of sessions with work are renewed (looked at again in ``older_than_s``); marks of
        idle sessions are dropped unless renewed since they were read (see the module's docstring).
        A look cannot tell a lost wake-up from one still waiting in the broker behind a backlog, so
        the first look that finds a session stalled wakes it (a dead worker's, a lost wake-up's:
        recovered at once). A later look that finds it stalled in the same state (same head job,
        same attempts: nobody ran it since) wakes it again only once that wake's back-off has run
        out: ``2 × older_than_s``, doubling up to ``max_backoff_s``, so a backlog costs a few
        wake-ups per session however long it lasts. Each woken session has one entry in
        ``keys.woken``, dropped once a look finds the session idle or held. ``now_ms``: Redis's
        clock (ms) unless given.
        """
        k = self.keys
        now = self.redis_ms() if now_ms is None else now_ms
        marks = self.r.zrangebyscore(k.pending, "-inf", now - int(older_than_s * 1000), start=0, num=limit,
                                     withscores=True)
        if not marks:
            return []
        pipe = self.r.pipeline(transaction=False)
        for sid, _ in marks:
            pipe.lindex(k.fifo(sid), 0)
            pipe.exists(k.lease(sid))
        seen = pipe.execute()
        heads, leased = seen[0::2], seen[1::2]
        stalled = {sid: head for (sid, _), head, held in zip(marks, heads, leased) if head and not held}
        attempts = self._attempts(stalled)
        looks: list[str | float] = []
        for (sid, score), head, held in zip(marks, heads, leased):
            looks += [sid, score, "idle" if not head else "held" if held else f"{head}:{attempts[sid]}"]
        first_ms = int(2 * older_than_s * 1000)
        return self._sweep(keys=[k.pending, k.woken], args=[now, first_ms, int(max_backoff_s * 1000), *looks])

    def _attempts(self, heads: dict[str, str]) -> dict[str, str]:
        """How many times each session's head job was started ('' if unknown): one round trip."""
        if not heads:
            return {}
        pipe = self.r.pipeline(transaction=False)
        for head in heads.values():
            if is_id(head):
                pipe.hget(self.keys.job(head), "attempts")
        found = iter(pipe.execute())
        return {sid: (next(found) or "") if is_id(head) else "" for sid, head in heads.items()}

    def count_active(self, limit: int = 0) -> tuple[int, int]:
        """(jobs queued or running, sessions running one) over the sessions marked pending; with
        ``limit``, stops once the jobs reach it. Exact per session, not a snapshot of them all."""
        k = self.keys
        jobs = running = start = 0
        while True:
            sids = self.r.zrange(k.pending, start, start + COUNT_CHUNK - 1)
            if not sids:
                return jobs, running
            pipe = self.r.pipeline(transaction=False)
            for sid in sids:
                pipe.llen(k.fifo(sid))
                pipe.exists(k.lease(sid))
            seen = pipe.execute()
            for queued, leased in zip(seen[0::2], seen[1::2]):
                jobs += queued
                running += bool(queued and leased)
            if limit and jobs >= limit:
                return jobs, running
            start += COUNT_CHUNK


class AsyncSessionMachine:
    """The lease holder's transitions on ``redis.asyncio``, for the worker's event loop: the same
    scripts and calls as ``SessionMachine``'s, awaited."""

    def __init__(self, r: aioredis.Redis, keys: Keys, result_ttl: int = 86400, session_ttl: int | None = None,
                 events_maxlen: int = EVENTS_MAXLEN):
        self.r = r
        self.keys = keys
        self.calls = Calls(keys, result_ttl, str(session_ttl or 0), events_maxlen)
        self._take = load(r, "take")
        self._checkpoint = load(r, "checkpoint")
        self._emit = load(r, "emit")
        self._commit = load(r, "commit")
        self._release = load(r, "release")
        self._seed = load(r, "seed")

    async def seed(self, session_id: str, messages: list[Message], system_prompt: str | None, origin: str) -> bool:
        """Make ``session_id`` with this history (a fork's new session, made by job ``origin``); False
        if it has history or work already (unless ``origin`` made it: a retried fork)."""
        now = utcnow()
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(self.keys.sessions, {session_id: now.timestamp()}, nx=True)
        keys, args = self.calls.seed(session_id, messages, system_prompt, None, now, origin)
        await self._seed(keys=keys, args=args, client=pipe)
        return (await pipe.execute())[-1][0] == "created"

    async def history(self, session_id: str, count: int) -> list[Message]:
        """The first ``count`` messages of the history (the lease holder's: nothing changes them meanwhile)."""
        raw = await self.r.lrange(self.keys.messages(session_id), 0, count - 1) if count > 0 else []
        return [Message.model_validate_json(m) for m in raw]

    async def take(self, session_id: str, token: str, job_id: str | None, max_attempts: int, worker: str = "",
                   history_limit: int = 0, acquire_ms: int = 0) -> Taken:
        keys, args = self.calls.take(session_id, token, job_id, max_attempts, worker, history_limit, acquire_ms)
        return read_take(await self._take(keys=keys, args=args))

    async def save_checkpoint(self, session_id: str, job_id: str, token: str, checkpoint: Checkpoint) -> bool:
        keys, args = self.calls.checkpoint(session_id, job_id, token, checkpoint)
        return bool(await self._checkpoint(keys=keys, args=args))

    async def emit(self, session_id: str, job_id: str, token: str,
                   events: list[tuple[str, str]]) -> tuple[bool, str]:
        keys, args = self.calls.emit(session_id, job_id, token, events)
        return read_emit(await self._emit(keys=keys, args=args))

    async def queue_emit(self, pipe: aioredis.client.Pipeline, keys: list[str], args: list[object]) -> None:
        """``emit`` queued into a pipeline (``emit_many``), its KEYS and ARGV from ``calls.emit``."""
        await self._emit(keys=keys, args=args, client=pipe)

    async def commit(self, session_id: str, job_id: str, token: str, status: str, messages: list[Message],
                     usage: Usage, created_at: str | None = None, result_json: str = "",
                     error_json: str = "", events: list[tuple[str, str]] = (),  # type: ignore[assignment]
                     keep: int | None = None) -> Committed:
        """``events``: the run's events not yet in its log, appended in the same step (before the
        terminal one), so a turn whose text came all at once costs no write of its own. ``keep``:
        the history is first cut to that many messages (a regenerated reply replaces the old).
        The job joins the namespace's ``recent`` index in the same round trip."""
        pipe = self.r.pipeline(transaction=False)
        if created_at:
            pipe.zadd(self.keys.sessions, {session_id: listing_score(created_at)})
        pipe.zadd(self.keys.recent, {job_id: utcnow().timestamp() * 1000})
        keys, args = self.calls.commit(session_id, job_id, token, status, messages, usage, result_json, error_json,
                                       events, keep)
        await self._commit(keys=keys, args=args, client=pipe)
        return read_commit((await pipe.execute())[-1])

    async def release(self, session_id: str, token: str) -> int | None:
        keys, args = self.calls.release(session_id, token)
        return read_release(await self._release(keys=keys, args=args))


Emit = tuple[AsyncSessionMachine, list[str], list[object]]
"""One job's events to append: its namespace's machine, and the KEYS and ARGV of its ``emit``."""


async def emit_many(r: aioredis.Redis, writes: list[Emit]) -> list[tuple[bool, str] | Exception]:
    """Several running jobs' events in one round trip: each job's its own lease-fenced ``emit``
    (one hash slot per call, so a cluster pipeline sends each to its node), in one pipeline (a server
    that lost the script gets it loaded and those calls sent again: ``pipelines``). Per write, what
    ``emit`` returns, or the error that call met; a connection error raises."""
    pipe = r.pipeline(transaction=False)
    for machine, keys, args in writes:
        await machine.queue_emit(pipe, keys, args)
    replies = await pipe.execute(raise_on_error=False)
    return [reply if isinstance(reply, Exception) else read_emit(reply) for reply in replies]
