"""The producer's API: submit chat jobs, poll or wait for them, manage sessions.

Validation happens here, before anything is written, so bad input never leaves a half-made job
or session behind.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal, overload

from celery import Celery

from . import batch_expiry, tracing
from .agent_profiles import load_profiles
from .content import inline_chars, is_blank, text_chars, validate_content
from .conversation import conversation_problem
from .errors import InvalidRequest, JobNotFound, NotCancellable, SessionBusy, SessionExists, shown
from .events import EventLog
from .job_listing import FleetSnapshot, JobListing
from .job_store import JobStore, encode_job
from .keys import Keys, new_job_id
from .models import CancelMode, Content, Job, JobEvent, JobStatus, Message, Session, SessionOp, utcnow
from .redis_pool import get_redis
from .request_params import Policy, check_allowed, decode_policy, validate_params
from .session_machine import CancelOutcome, SessionMachine, SubmitOutcome
from .session_store import SessionStore
from .settings import Settings, get_settings
from .urls import check_destination
from .wakeups import WakePublisher

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
LOOKUP_ID = re.compile(r"^[\x21-\x7e]{1,256}$")
"""What a job or batch ID can look like at all; anything else (odd bytes, spaces) names nothing."""
MAX_SESSION_TTL = 10 * 365 * 86400
OnBusy = Literal["enqueue", "reject", "interrupt", "rollback"]
ON_BUSY = ("enqueue", "reject", "interrupt", "rollback")
"""What a message does when its session is busy: queue behind (``enqueue``), be refused
(``reject``), or stop the session's running and queued jobs and run next (``interrupt`` keeps the
stopped turn so far in the history, ``rollback`` leaves no trace of it)."""


def new_id() -> str:
    """Unguessable: 122 random bits."""
    return uuid.uuid4().hex


def validate_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not SESSION_ID.fullmatch(session_id):
        raise InvalidRequest(
            f"malformed session ID {shown(session_id)}: use 1-128 characters of letters, digits and ._:@- "
            "starting with a letter or digit"
        )
    return session_id


def looks_like_id(value: object) -> bool:
    """Whether a job or batch ID could name a record; one that cannot is unknown, never sent to Redis."""
    return isinstance(value, str) and LOOKUP_ID.fullmatch(value) is not None


def id_text(value: object) -> str:
    """An ID for an error message: as it is when it could be one, else escaped and quoted."""
    return str(value) if looks_like_id(value) else shown(value)


def validate_text(value: object, what: str) -> str:
    """A string that can be stored: not bytes or another type, no lone surrogates (which are what
    undecodable command-line bytes become in Python, and which UTF-8 cannot encode)."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{what} must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequest(f"{what} is not valid text: character {exc.start} is a lone surrogate "
                             "(undecodable bytes?); send UTF-8") from None
    return value


def validate_metadata(metadata: object, limit: int) -> dict[str, Any]:
    """A JSON object exactly as given: string keys, finite numbers, no value JSON would change."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidRequest(f"metadata must be a JSON object, not {type(metadata).__name__}")
    _check_json(metadata, "metadata")
    size = len(json.dumps(metadata, separators=(",", ":")))  # as the job record stores it
    if size > limit:
        raise InvalidRequest(f"metadata is {size} bytes; the limit is {limit}")
    return metadata


def _check_json(value: object, path: str, depth: int = 0) -> None:
    if depth > 32:
        raise InvalidRequest(f"{path} is nested more than 32 levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRequest(f"{path} has the key {shown(key)}: keys must be strings")
            validate_text(key, f"a key of {path}")
            _check_json(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, str):
        validate_text(value, path)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(f"{path} is {value}: JSON has no NaN or infinity")
    elif value is not None and not isinstance(value, (bool, int)):
        raise InvalidRequest(f"{path} is a {type(value).__name__}: metadata holds only JSON values "
                             "(objects, arrays, strings, numbers, true, false, null)")


def _check_parts(m: Message, where: str, max_chars: int, max_inline: int) -> None:
    """A seeded message's content parts: a user's as a submitted message's; the other roles take
    text parts only."""
    parts = validate_content(m.content, f"{where}.content")
    if m.role != "user" and (other := next((p["type"] for p in parts if p["type"] != "text"), None)):
        raise InvalidRequest(f"{where} is a {m.role} message with a {other} part; only user messages carry media")
    if (chars := text_chars(parts)) > max_chars:
        raise InvalidRequest(f"{where}'s text parts are {chars} characters; the limit is {max_chars}")
    if (inline := inline_chars(parts)) > max_inline:
        raise InvalidRequest(f"{where}'s non-text parts (URLs, inline data) are {inline} characters; the limit is "
                             f"{max_inline} (CHATQ_MAX_INLINE_BYTES)")


def validate_conversation(messages: object, max_chars: int, whole: bool = True,
                          max_inline: int = 1 << 20) -> list[Message]:
    """Messages as the chat-completions API takes them, as ``Message`` s; ``whole``: they must also
    form a valid conversation (known roles, every tool call answered), else InvalidRequest. Content
    parts are checked as a submitted message's (``chatq.tasks.content``)."""
    if not isinstance(messages, list):
        raise InvalidRequest(f"messages must be a list, not {type(messages).__name__}")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if isinstance(m, dict):
            _check_json(m, f"messages[{i}]")
            try:
                m = Message.model_validate(m)
            except ValueError as exc:
                raise InvalidRequest(f"messages[{i}] is not a chat message: {exc.errors()[0]['msg']}") from None
        elif not isinstance(m, Message):
            raise InvalidRequest(f"messages[{i}] must be a message object, not {type(m).__name__}")
        if isinstance(m.content, str) and len(m.content) > max_chars:
            raise InvalidRequest(f"messages[{i}] is {len(m.content)} characters; the limit is {max_chars}")
        if isinstance(m.content, list):
            _check_parts(m, f"messages[{i}]", max_chars, max_inline)
        out.append(m)
    if whole and out and (problem := conversation_problem([m.to_provider() for m in out])):
        raise InvalidRequest(f"messages do not form a conversation a provider accepts: {problem[0]}")
    return out


def validate_ttl(ttl: object) -> int | None:
    """A session's own retention: whole seconds, 0 to keep it forever, None to leave it as it is."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_SESSION_TTL:
        raise InvalidRequest(f"session TTL must be whole seconds from 0 (keep forever) to {MAX_SESSION_TTL}")
    return ttl


class ChatClient:
    def __init__(self, redis_url: str | None = None, settings: Settings | None = None,
                 tenant: str | None = None, wakeups: WakePublisher | None = None):
        base = settings or get_settings()
        self.settings = base.model_copy(update={"redis_url": redis_url}) if redis_url else base
        s = self.settings
        self.r = get_redis(s.redis_url, s.redis_max_connections, s.redis_socket_timeout)
        self.namespace = s.namespace if tenant is None else f"{s.namespace}.t.{tenant}"
        self.keys = Keys(self.namespace)
        if tenant is not None:
            self.r.sadd(Keys(s.namespace).namespaces, self.namespace)
        self.jobs = JobStore(self.r, self.keys)
        self.listing = JobListing(self.r, self.keys)
        self._fleet_keys = Keys(s.namespace)  # the fleet's, shared by every tenant namespace
        self.events = EventLog(self.r, self.keys, block_seconds=min(2.0, s.redis_socket_timeout / 2),
                               fleet=self._fleet_keys)
        self.sessions = SessionStore(self.r, self.keys, s.session_ttl)
        self.machine = SessionMachine(self.r, self.keys, s.result_ttl, s.session_ttl, s.events_maxlen,
                                      fleet=self._fleet_keys)
        self._profiles = load_profiles(s)
        self._fleet_agents: tuple[float, set[str], dict[str, str]] = (0.0, set(), {})
        self.wakeups = wakeups or WakePublisher.shared(s)
        # The broker is this Redis: a submit that creates a session wakes it in its own round trip.
        self._wakes_inline = self.wakeups.pushes_to(s.redis_url) and not self.machine.cluster
        tracing.configure()

    @property
    def app(self) -> Celery:
        """The Celery app wake-ups go through (for control commands such as ``ping``)."""
        return self.wakeups.app

    def _fleet(self) -> tuple[set[str], dict[str, str]]:
        """The agents the fleet's workers registered, and the override policies they published
        (re-read at most every 5 s)."""
        fetched_at, agents, policies = self._fleet_agents
        if time.monotonic() - fetched_at > 5:
            pipe = self.r.pipeline(transaction=False)
            pipe.smembers(self._fleet_keys.agents)
            pipe.hgetall(self._fleet_keys.agent_overrides)
            agents, policies = pipe.execute()
            self._fleet_agents = (time.monotonic(), set(agents), policies)
        return agents, policies

    def known_agents(self) -> set[str]:
        return set(self._profiles) | self._fleet()[0]

    def override_policy(self, agent: str) -> Policy | None:
        """Which parameters a request to ``agent`` may set: what the fleet's workers published for
        it (they enforce it), else this producer's own profile of it, else None (unknown here:
        the worker refuses what its profile forbids, failing the job)."""
        published = self._fleet()[1].get(agent)
        policy = decode_policy(published) if published is not None else None
        if policy is None and agent in self._profiles:
            policy = self._profiles[agent].allow_overrides
        return policy

    def checked_message(self, message: object) -> Content:
        """A string, or a list of content parts valid for the openai SDK's types; text within
        CHATQ_MAX_MESSAGE_CHARS, the rest of the parts within CHATQ_MAX_INLINE_BYTES; not blank."""
        s = self.settings
        if isinstance(message, str):
            if len(message) > s.max_message_chars:
                raise InvalidRequest(f"message is {len(message)} characters; the limit is {s.max_message_chars}")
            validate_text(message, "message")
        else:
            if isinstance(message, (bytes, bytearray)):
                validate_text(message, "message")
            parts = validate_content(message)
            _check_json(parts, "message")
            if (chars := text_chars(parts)) > s.max_message_chars:
                raise InvalidRequest(f"message's text parts are {chars} characters; the limit is {s.max_message_chars}")
            if (inline := inline_chars(parts)) > s.max_inline_bytes:
                raise InvalidRequest(
                    f"message's non-text parts (URLs, inline data) are {inline} characters; the limit is "
                    f"{s.max_inline_bytes} (CHATQ_MAX_INLINE_BYTES): send large media by URL or file ID")
        if is_blank(message):  # type: ignore[arg-type]
            raise InvalidRequest("message is empty")
        return message  # type: ignore[return-value]

    def checked_params(self, params: object, agent: str) -> dict[str, Any] | None:
        """The request's chat-completions parameters (``chatq.tasks.request_params``), allowed by the
        agent's policy as far as this producer knows it; None when there are none."""
        checked = validate_params(params)
        if not checked:
            return None
        _check_json(checked, "params")
        size = len(json.dumps(checked, separators=(",", ":")))
        if size > self.settings.max_params_bytes:
            raise InvalidRequest(f"params are {size} bytes as JSON; the limit is {self.settings.max_params_bytes}")
        policy = self.override_policy(agent)
        if policy is not None:
            check_allowed(checked, policy, agent)
        return checked

    def build_job(
        self,
        message: Content,
        session_id: str | None = None,
        agent: str | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
        batch_id: str | None = None,
        callback_url: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Job:
        """Validate a request into a queued Job, or raise InvalidRequest. Writes nothing.

        Every argument is checked as given: a wrong type, a lone surrogate or a value JSON would
        change is refused, never coerced.
        """
        s = self.settings
        message = self.checked_message(message)
        session_id = new_id() if session_id is None else validate_session_id(session_id)
        if agent is None:
            agent = "default"
        elif not isinstance(agent, str):
            raise InvalidRequest(f"agent must be a string, not {type(agent).__name__}")
        if agent not in self.known_agents():
            raise InvalidRequest(f"unknown agent {shown(agent)}; known: {', '.join(sorted(self.known_agents()))}")
        if idempotency_key is not None and not (
                isinstance(idempotency_key, str) and IDEMPOTENCY_KEY.fullmatch(idempotency_key)):
            raise InvalidRequest("idempotency key must be 1-200 printable ASCII characters without spaces")
        metadata = validate_metadata(metadata, s.max_metadata_bytes)
        if callback_url is not None:
            check_destination(callback_url, s.webhook_allow_private, resolve=False)
        checked = self.checked_params(params, agent)
        return Job(job_id=new_job_id(session_id), session_id=session_id, agent=agent, message=message,
                   params=checked, metadata=metadata, idempotency_key=idempotency_key, batch_id=batch_id,
                   callback_url=callback_url)

    def submit(
        self,
        message: Content,
        session_id: str | None = None,
        agent: str | None = None,
        idempotency_key: str | None = None,
        metadata: dict[str, Any] | None = None,
        on_busy: OnBusy = "enqueue",
        callback_url: str | None = None,
        session_ttl: int | None = None,
        params: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> Job:
        """Queue a message behind its session's earlier ones and return the job without waiting.

        ``message``: a string, or a list of chat-completions content parts (text, image_url,
        input_audio, file). ``on_busy``: see ``ON_BUSY``. ``session_ttl`` sets the session's own
        retention (seconds it is kept once idle; 0 keeps it). ``params``: chat-completions parameters
        for this request over the agent's (``model``, ``temperature``, ``response_format`` -- a
        pydantic model class works too --, ``extra_body``...; see ``chatq.tasks.request_params``).
        ``stream``: a reader will follow the job (``ChatClient.stream``, ``GET .../events``): its
        provider calls stream and their text is written as it comes, from the first call, so a
        reader that comes a moment later misses nothing (``CHATQ_STREAM=auto`` streams any other
        job only from the first call after a reader follows it).
        """
        if not (isinstance(on_busy, str) and on_busy in ON_BUSY):
            raise InvalidRequest(f"on_busy must be one of {', '.join(ON_BUSY)}; not {shown(on_busy)}")
        session_ttl = validate_ttl(session_ttl)
        job = self.build_job(message, session_id, agent, idempotency_key, metadata, callback_url=callback_url,
                             params=params)
        if idempotency_key is not None:
            job, written = self._claim(idempotency_key, job)
            if written:
                return job
        return self._enqueue(job, on_busy, session_ttl, stream)

    def _enqueue(self, job: Job, on_busy: str, session_ttl: int | None = None, stream: bool = False) -> Job:
        """Write a checked job behind its session's earlier ones and wake the session if needed
        (traced, when traces are on: the job carries its submission's context to its worker)."""
        with tracing.submitting(job):
            return self._write(job, on_busy, session_ttl, stream)

    def _write(self, job: Job, on_busy: str, session_ttl: int | None, stream: bool = False) -> Job:
        # Built for every submit, used by those that create their session: ~10 µs against a round trip.
        wake = self.wakeups.message(job.session_id, self.namespace, job.job_id) if self._wakes_inline else ""
        fields = encode_job(job)
        if stream:  # the mark a reader's follow would set (lua/follow.lua), there before any worker looks
            fields["followed"] = "1"
        if on_busy in ("interrupt", "rollback"):
            submitted = self.machine.interrupt(job.job_id, job.session_id, fields, on_busy, session_ttl,
                                               hand_to=self._fleet_keys, queue=self.settings.queue, wake=wake)
            if submitted.outcome is SubmitOutcome.stale:
                raise SessionBusy(f"session {job.session_id}'s queue kept changing while interrupting it; try again")
            self._finished_elsewhere(submitted.cancelled)
            outcome = submitted.outcome
        else:
            outcome = self.machine.submit(job.job_id, job.session_id, fields, on_busy, session_ttl,
                                          hand_to=self._fleet_keys, queue=self.settings.queue, wake=wake)
        if outcome is SubmitOutcome.busy:
            raise SessionBusy(f"session {job.session_id} is busy with an earlier message (on_busy='reject')")
        if outcome is SubmitOutcome.existing:
            existing = self.get(job.job_id)
            if existing is None:
                raise JobNotFound(f"idempotency key {job.idempotency_key!r} names job {job.job_id}, which has expired")
            return existing
        if outcome is SubmitOutcome.created:
            self.wake(job.session_id, job.job_id)
        return job

    def _claim(self, idempotency_key: str, job: Job) -> tuple[Job, bool]:
        """The job an idempotency key names, and whether it is written: this one if the key is new;
        the existing one if written; else this request's job under the key's job and session IDs.

        The key is claimed first (SET NX) and the job written after, in its own session's slot: the
        two cannot be one script on a cluster. A claimer that died in between, or that is still
        writing, left a claim without a job; the submit script refuses an existing job ID, so
        writing it again under the claimed IDs is safe whoever gets there first.
        """
        key = self.keys.idempotency(idempotency_key)
        value = f"{job.job_id} {job.session_id}"
        claimed = self.r.set(key, value, nx=True, ex=self.settings.result_ttl, get=True)
        if claimed is None:
            return job, False
        job_id, _, session_id = claimed.partition(" ")
        existing = self.get(job_id)
        if existing is not None:
            return existing, True
        return job.model_copy(update={"job_id": job_id, "session_id": session_id}), False

    def wake(self, session_id: str, job_id: str | None = None) -> None:
        try:
            self.wakeups.wake(session_id, self.namespace, job_id)
        except Exception:
            # The job is safely queued in Redis; a worker's sweeper wakes the session later.
            log.exception("could not publish the wake-up for session %s; the sweeper will", session_id)

    def get(self, job_id: str) -> Job | None:
        """The job, or None if unknown or expired (an ID no job could have is unknown too)."""
        return self.jobs.get(job_id) if looks_like_id(job_id) else None

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        if not looks_like_id(job_id):
            raise JobNotFound(f"unknown or expired job: {id_text(job_id)}")
        return self.jobs.wait(job_id, timeout)

    def stream(self, job_id: str, after: int | None = None, timeout: float | None = None) -> Iterator[JobEvent]:
        """The job's events after seq ``after`` (from the first if None) as they are written, each
        once and in order, ending with the terminal one (``job.succeeded``, ``job.failed`` or
        ``job.cancelled``). ``EventsGone`` if the log expired or was trimmed past ``after``;
        ``WaitTimeout`` if no terminal event came within ``timeout`` seconds."""
        if not looks_like_id(job_id):
            raise JobNotFound(f"unknown or expired job: {id_text(job_id)}")
        return self.events.follow(job_id, after or 0, timeout)

    @overload
    def chat(self, message: Content, session_id: str | None = ..., agent: str | None = ...,
             timeout: float | None = ..., *, stream: Literal[False] = ..., **kwargs: Any) -> Job: ...

    @overload
    def chat(self, message: Content, session_id: str | None = ..., agent: str | None = ...,
             timeout: float | None = ..., *, stream: Literal[True], **kwargs: Any) -> Iterator[JobEvent]: ...

    def chat(self, message: Content, session_id: str | None = None, agent: str | None = None,
             timeout: float | None = None, *, stream: bool = False, **kwargs: Any) -> Job | Iterator[JobEvent]:
        """Submit and wait for the finished job; with ``stream=True``, submit (at once, refusing bad
        input before the first event) and return the job's events as they come (the job submitted
        with ``stream=True``: streamed from its first provider call)."""
        job = self.submit(message, session_id, agent, stream=stream, **kwargs)
        if stream:
            return self.stream(job.job_id, timeout=timeout)
        return self.wait(job.job_id, timeout)

    def cancel(self, job_id: str, rollback: bool = False) -> Job:
        """Cancel a queued job, or stop a running one: its worker ends it ``cancelled`` within a
        second, keeping the user's message and the partial reply in the history (``rollback``: no
        trace of the turn). Returns the job as it is now: ``cancelled``, or still ``running`` with
        ``cancel`` set (``wait`` for the end). A repeat is fine; a finished job is NotCancellable."""
        job = self.get(job_id)
        if job is None:
            raise JobNotFound(f"unknown or expired job: {id_text(job_id)}")
        mode = CancelMode.rollback if rollback else CancelMode.keep
        outcome, status = self.machine.cancel(job_id, job.session_id, mode.value)
        if outcome is CancelOutcome.unknown:
            raise JobNotFound(f"unknown or expired job: {job_id}")
        if outcome is CancelOutcome.finished and status != JobStatus.cancelled:  # a repeat is fine
            raise NotCancellable(f"job {job_id} has finished ({status}); there is nothing to cancel")
        if outcome is CancelOutcome.cancelled:
            self._finished_elsewhere([job_id], [job])
        return self.get(job_id) or job

    def _finished_elsewhere(self, job_ids: list[str], jobs: list[Job | None] | None = None) -> None:
        """Queued jobs this client cancelled: list them as recent and count them down on their
        batches (a worker does both for the jobs it finishes)."""
        if job_ids:
            now_ms = utcnow().timestamp() * 1000
            self.r.zadd(self.keys.recent, {job_id: now_ms for job_id in job_ids})
        for job in jobs if jobs is not None else self.jobs.get_many(job_ids):
            if job is not None and job.batch_id:
                batch_expiry.turns_finished(self.r, self.keys, self.settings, job.batch_id)

    def list_jobs(self, status: str | None = None, session_id: str | None = None, limit: int = 50) -> list[Job]:
        """Running and queued jobs, then recently finished ones (newest first), up to ``limit``;
        ``status`` and ``session_id`` filter them."""
        if status is not None and status not in {s.value for s in JobStatus}:
            raise InvalidRequest(f"status must be one of {', '.join(s.value for s in JobStatus)}; not {shown(status)}")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
            raise InvalidRequest("limit must be a whole number from 1 to 10000")
        session_id = None if session_id is None else validate_session_id(session_id)
        return self.listing.list(status, session_id, limit)

    def fleet(self, window: float = 10.0) -> tuple[FleetSnapshot, list[tuple[str, int]]]:
        """The namespace's work now and in the last ``window`` seconds, and the worker processes
        waiting for hand-offs on its queue with their room (``chatq top``)."""
        now_ms = time.time() * 1000
        waiting = self.r.zrangebyscore(self._fleet_keys.idle(self.settings.queue), now_ms, "+inf")
        processes = [(m.rpartition("#")[0], int(m.rpartition("#")[2] or 0)) for m in waiting]
        return self.listing.snapshot(window), processes

    def create_session(self, session_id: str | None = None, ttl: int | None = None,
                       system_prompt: str | None = None, messages: list[Message | dict[str, Any]] | None = None
                       ) -> Session:
        """Get or create a session; ``ttl`` sets its own retention (seconds kept once idle; 0 keeps it).

        With ``system_prompt`` (used instead of its agent's) or ``messages`` (an earlier conversation:
        system, developer, user, assistant with tool calls, tool; checked as a whole), the session is
        *seeded*: made with that history, which its first turn sees. Seeding a session that already
        has history or work raises ``SessionExists`` and changes nothing."""
        sid = new_id() if session_id is None else validate_session_id(session_id)
        ttl = validate_ttl(ttl)
        if system_prompt is None and messages is None:
            self.sessions.create(sid, ttl)
        else:
            history = validate_conversation(messages or [], self.settings.max_message_chars,
                                           max_inline=self.settings.max_inline_bytes)
            if system_prompt is not None and not validate_text(system_prompt, "system_prompt").strip():
                raise InvalidRequest("system_prompt is empty")
            if not self.sessions.seed(sid, history, system_prompt, ttl):
                raise SessionExists(f"session {sid} already has history or queued work; seed a new session")
        session = self.sessions.get(sid)
        assert session is not None
        return session

    def regenerate(self, session_id: str, agent: str | None = None) -> Job:
        """Queue a new reply to the session's last user message, replacing the reply it has (and its
        tool steps) once it is written; behind the session's earlier jobs, like any turn."""
        return self._enqueue(self._op_job(session_id, agent, SessionOp(kind="regenerate")), "enqueue")

    def fork(self, session_id: str, at: int, into: str | None = None,
             replace: str | Message | dict[str, Any] | None = None) -> Job:
        """Queue a fork: once the session's earlier jobs are done, its first ``at`` messages are copied
        into the new session ``into`` (a new ID if None), followed by ``replace`` if given (a user
        message's text, or any message: an edited message ``at``). The job's result names the new
        session (``result.content``). Then ``regenerate`` on it answers an edited user message."""
        if isinstance(at, bool) or not isinstance(at, int) or at < 0:
            raise InvalidRequest(f"at must be a message count (an int >= 0), not {shown(at)}")
        into = new_id() if into is None else validate_session_id(into)
        if into == session_id:
            raise InvalidRequest("a fork needs a new session ID, not the session's own")
        edited = None
        if replace is not None:
            edited = validate_conversation([{"role": "user", "content": replace} if isinstance(replace, str)
                                            else replace], self.settings.max_message_chars, whole=False,
                                           max_inline=self.settings.max_inline_bytes)[0]
        return self._enqueue(self._op_job(session_id, None, SessionOp(kind="fork", at=at, into=into,
                                                                      replace=edited)), "enqueue")

    def _op_job(self, session_id: str, agent: str | None, op: SessionOp) -> Job:
        session_id = validate_session_id(session_id)
        agent = "default" if agent is None else agent
        if agent not in self.known_agents():
            raise InvalidRequest(f"unknown agent {shown(agent)}; known: {', '.join(sorted(self.known_agents()))}")
        return Job(job_id=new_job_id(session_id), session_id=session_id, agent=agent, message="", op=op)

    def get_session(self, session_id: str) -> Session | None:
        return self.sessions.get(validate_session_id(session_id))

    def list_sessions(self) -> list[str]:
        return self.sessions.list()

    def delete_session(self, session_id: str) -> bool:
        deleted = self.sessions.delete(validate_session_id(session_id))
        if deleted is None:
            raise SessionBusy(f"session {session_id} has jobs queued or running; cancel or wait for them first")
        return deleted
