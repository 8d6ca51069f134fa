"""Prototype fixes for the hot spots the profiles found, applied by monkeypatching, bench-only.

They exist to measure what each proposed change to ``tasks/`` or ``worker/`` would gain
(``run.py --patch NAME,...``), never to ship: the real change belongs in the named function.
Worker-side patches are applied in the worker processes by ``bench.patched_worker``; client-side
ones in the benchmark process, once per process. Each keeps the behaviour the tests rely on
(order, lease fencing, the sweeper's recovery); they pass the benchmark's turn checks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

WORKER: dict[str, Callable[[], None]] = {}
CLIENT: dict[str, Callable[[], None]] = {}


def _worker(fn: Callable[[], None]) -> Callable[[], None]:
    WORKER[fn.__name__.replace("_", "-")] = fn
    return fn


def _client(fn: Callable[[], None]) -> Callable[[], None]:
    CLIENT[fn.__name__.replace("_", "-")] = fn
    return fn


@_worker
def schema_cache() -> None:
    """worker/tools.py ToolRegistry.schemas: build the tools' JSON schemas once, not per request
    (pydantic's ``model_json_schema`` for every tool on every provider call)."""
    from worker.tools import ToolRegistry

    stock = ToolRegistry.schemas
    if getattr(stock, "bench_patched", False):
        return

    def schemas(self: ToolRegistry) -> list[dict]:
        cached = self.__dict__.get("_schemas_cache")
        if cached is None or len(cached) != len(self.names()):
            cached = self.__dict__["_schemas_cache"] = stock(self)
        return cached

    schemas.bench_patched = True  # type: ignore[attr-defined]
    ToolRegistry.schemas = schemas  # type: ignore[method-assign]


_PROVIDER = {"post": False, "per_thread": False}
_local = threading.local()


def _install_provider_call() -> None:
    """One replacement ``Provider._call`` honouring both provider patches."""
    import ssl

    import openai
    from openai.types.chat import ChatCompletion

    from worker import offline_model
    from worker.provider import Provider

    tls = ssl.create_default_context()  # once: each OpenAI() otherwise builds one (~20 ms, CA loading)

    def _call(self: Provider, request: dict) -> ChatCompletion:
        if self._client is None:
            return ChatCompletion.model_validate(offline_model.complete(request))
        client = self._client
        if _PROVIDER["per_thread"]:
            client = getattr(_local, "client", None)
            if client is None:
                client = _local.client = openai.OpenAI(
                    api_key=self._client.api_key, base_url=self._client.base_url, max_retries=0,
                    http_client=openai.DefaultHttpx2Client(verify=tls, timeout=self.settings.provider_timeout))
        if _PROVIDER["post"]:
            return client.post("/chat/completions", body=request, cast_to=ChatCompletion,
                               options={"security": {"bearer_auth": True}})
        return client.chat.completions.create(**request)

    Provider._call = _call  # type: ignore[method-assign]


@_worker
def sdk_post() -> None:
    """worker/provider.py Provider._call: send the already-plain JSON request with the SDK's
    ``client.post`` instead of ``chat.completions.create``, which re-walks every message and tool
    schema against the SDK's TypedDicts (``maybe_transform``) on every call."""
    _PROVIDER["post"] = True
    _install_provider_call()


@_worker
def thread_sdk() -> None:
    """worker/provider.py Provider: one OpenAI client (and connection pool) per thread instead of
    one per process shared by hundreds of threads: that pool keeps only 100 idle connections (the
    SDK's default), so each wave of calls beyond 100 opens new TCP connections, and a larger pool
    is slower still (httpcore scans every connection under one lock per request). The per-thread
    clients share one TLS context: building one per client costs ~20 ms of CPU."""
    _PROVIDER["per_thread"] = True
    _install_provider_call()


_SUBMIT_LEN = """
if KEYS[4] ~= '' then
  local existing = redis.call('GET', KEYS[4])
  if existing then return {'existing', existing, 0} end
end
if ARGV[3] == 'reject' and redis.call('LLEN', KEYS[2]) > 0 then return {'busy', '', 0} end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
local n = redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
if KEYS[4] ~= '' then redis.call('SET', KEYS[4], ARGV[1], 'EX', ARGV[5]) end
return {'created', ARGV[1], n}
"""


@_client
def coalesce_wake() -> None:
    """tasks/session_queue.py _SUBMIT + tasks/client.py ChatClient.submit: have the submit script
    return the queue length and publish a wake-up only when the job is alone in its session's
    queue. A longer queue already has a pending wake-up or a lease holder that drains it before
    it may release (``_RELEASE`` checks LLEN), and the sweeper covers a lost one as before."""
    from tasks.client import ChatClient
    from tasks.errors import InvalidRequest, JobNotFound, SessionBusy
    from tasks.job_store import encode_job
    from tasks.models import utcnow

    def submit(self: ChatClient, message: str, session_id=None, agent=None, idempotency_key=None,
               metadata=None, on_busy="enqueue", callback_url=None):
        if on_busy not in ("enqueue", "reject"):
            raise InvalidRequest("on_busy must be 'enqueue' or 'reject'")
        job = self.build_job(message, session_id, agent, idempotency_key, metadata, callback_url=callback_url)
        script = self.__dict__.get("_submit_len") or self.__dict__.setdefault(
            "_submit_len", self.r.register_script(_SUBMIT_LEN))
        k, now = self.keys, utcnow()
        flat = [x for pair in encode_job(job).items() for x in pair]
        outcome, job_id, length = script(
            keys=[k.job(job.job_id), k.queue(job.session_id), k.pending,
                  k.idempotency(idempotency_key) if idempotency_key else ""],
            args=[job.job_id, job.session_id, on_busy, now.timestamp(), self.settings.result_ttl, *flat])
        if outcome == "busy":
            raise SessionBusy(f"session {job.session_id} is busy")
        if outcome == "existing":
            existing = self.get(job_id)
            if existing is None:
                raise JobNotFound(f"idempotency key {idempotency_key!r} names job {job_id}, which has expired")
            return existing
        if int(length) == 1:
            self.wake(job.session_id, job.job_id)
        return job

    ChatClient.submit = submit  # type: ignore[method-assign]


class _Listener:
    """One pattern subscription per client process, fanning each ``done`` message to its waiter."""

    def __init__(self, r, pattern: str):
        self.events: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        self.pubsub = r.pubsub(ignore_subscribe_messages=True)
        self.pubsub.psubscribe(**{pattern: self._on_message})
        self.thread = self.pubsub.run_in_thread(sleep_time=1.0, daemon=True)

    def _on_message(self, message: dict) -> None:
        with self.lock:
            event = self.events.get(message["channel"])
        if event:
            event.set()


@_client
def shared_pubsub() -> None:
    """tasks/job_store.py JobStore.wait: one long-lived pub/sub connection per client process
    instead of a new one per ``wait`` (redis-py's ``PubSub.close`` disconnects it, so every wait
    paid a TCP connect + HELLO handshake, and held one of the pool's 64 connections meanwhile)."""
    from tasks.errors import JobNotFound, WaitTimeout
    from tasks.job_store import JobStore

    listeners: dict[tuple[int, str], _Listener] = {}
    lock = threading.Lock()

    def wait(self: JobStore, job_id: str, timeout: float | None = None):
        key = (id(self.r), self.keys.ns)
        with lock:
            listener = listeners.get(key)
            if listener is None:
                listener = listeners[key] = _Listener(self.r, self.keys.done_channel("*"))
        channel = self.keys.done_channel(job_id)
        event = threading.Event()
        with listener.lock:
            listener.events[channel] = event
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                job = self.get(job_id)
                if job is None:
                    raise JobNotFound(f"unknown or expired job: {job_id}")
                if job.status.finished:
                    return job
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeout(f"job {job_id} still {job.status.value} after {timeout}s")
                event.wait(min(remaining if remaining is not None else 5.0, 5.0))
                event.clear()
        finally:
            with listener.lock:
                listener.events.pop(channel, None)

    JobStore.wait = wait  # type: ignore[method-assign]


_START_NEXT = """
-- KEYS: queue, lease, session, sessions, pending, messages
-- ARGV: token, now, max_attempts, ttl, session_id, score, job_prefix, done_prefix, exhausted_error,
--       worker, history_limit
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'lost'} end
local job_id = redis.call('LINDEX', KEYS[1], 0)
if not job_id then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[5], ARGV[5])
  return {'released'}
end
local job = ARGV[7] .. job_id
local checkpoint_key = job .. ':checkpoint'
local status = redis.call('HGET', job, 'status')
if (not status) or (status ~= 'queued' and status ~= 'running') then
  redis.call('LPOP', KEYS[1])
  return {'skip'}
end
if redis.call('HSETNX', KEYS[3], 'created_at', ARGV[2]) == 1 then
  redis.call('HSET', KEYS[3], 'updated_at', ARGV[2])
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[5])
end
local attempts = redis.call('HINCRBY', job, 'attempts', 1)
if attempts > tonumber(ARGV[3]) then
  redis.call('HSET', job, 'status', 'failed', 'finished_at', ARGV[2], 'error', ARGV[9])
  redis.call('EXPIRE', job, ARGV[4])
  redis.call('DEL', checkpoint_key)
  redis.call('LPOP', KEYS[1])
  redis.call('PUBLISH', ARGV[8] .. job_id, 'failed')
  return {'exhausted', job_id}
end
redis.call('HSETNX', job, 'started_at', ARGV[2])
redis.call('HSET', job, 'status', 'running', 'worker', ARGV[10])
local out = {'run', job_id, redis.call('GET', checkpoint_key) or ''}
local fields = redis.call('HGETALL', job)
table.insert(out, #fields)
for _, v in ipairs(fields) do table.insert(out, v) end
for _, v in ipairs(redis.call('LRANGE', KEYS[6], -tonumber(ARGV[11]), -1)) do table.insert(out, v) end
return out
"""


@_worker
def fused_runner() -> None:
    """worker/runner.py SessionRunner.drain + tasks/session_queue.py _START/_RELEASE: one script
    that takes the queue head, starts it and returns its history (or releases the lease when the
    queue is empty), instead of LINDEX + _START + LRANGE per job and LINDEX + _RELEASE per drain:
    2 round trips per job (start, commit) instead of 4, and 1 instead of 2 to finish a drain."""
    import uuid

    from tasks.session_queue import SessionQueue

    if hasattr(SessionQueue, "take"):  # the fix has landed (SessionQueue.take): nothing to prototype
        return

    from tasks.job_store import decode_job
    from tasks.models import Checkpoint, JobError, Message, utcnow
    from tasks.session_store import SessionStore
    from worker.runner import SessionRunner

    prefetched = threading.local()
    stock_history = SessionStore.history

    def history(self: SessionStore, session_id: str, limit: int | None = None) -> list[Message]:
        held = getattr(prefetched, "value", None)
        if held and held[0] == session_id and limit:
            return held[1][-limit:]
        return stock_history(self, session_id, limit)

    def drain(self: SessionRunner, session_id: str, namespace: str | None = None) -> int:
        sp = self.space(namespace)
        token = f"{self.identity}:{uuid.uuid4().hex}"
        if not sp.queue.acquire(session_id, token, self.lease_ms):
            return 0
        k = sp.keys
        lease_key = k.lease(session_id)
        self.leases.hold(lease_key, token)
        script = self.__dict__.get("_start_next") or self.__dict__.setdefault(
            "_start_next", self.r.register_script(_START_NEXT))
        error = JobError(type="WorkerLost", retryable=False, message=(
            f"the job's worker died {self.settings.max_attempts} times; giving up so the session can move on"))
        limit = max((a.history_limit for a in self.agents.values()), default=1)
        ran = 0
        try:
            while True:
                if self.stopping.is_set():
                    self.hand_off(sp, session_id, token)
                    return ran
                now = utcnow()
                res = script(
                    keys=[k.queue(session_id), lease_key, k.session(session_id), k.sessions, k.pending,
                          k.messages(session_id)],
                    args=[token, now.isoformat(), self.settings.max_attempts, self.settings.result_ttl, session_id,
                          now.timestamp(), f"{k.ns}:job:", f"{k.ns}:done:", error.model_dump_json(),
                          self.identity, limit])
                if res[0] in ("released", "lost"):
                    return ran
                if res[0] == "exhausted":
                    self.notify(sp, res[1])
                if res[0] != "run":
                    continue
                n = int(res[3])
                fields = dict(zip(res[4:4 + n:2], res[5:4 + n:2]))
                checkpoint = Checkpoint.model_validate_json(res[2]) if res[2] else None
                prefetched.value = (session_id, [Message.model_validate_json(m) for m in res[4 + n:]])
                try:
                    ok = self.run_job(sp, decode_job(fields), checkpoint, token)
                finally:
                    prefetched.value = None
                if not ok:
                    return ran
                ran += 1
        finally:
            self.leases.drop(lease_key)

    SessionStore.history = history  # type: ignore[method-assign]
    SessionRunner.drain = drain  # type: ignore[method-assign]


def apply(names: list[str], side: dict[str, Callable[[], None]]) -> list[str]:
    """Apply the named patches that belong to this side; returns the names applied."""
    unknown = [n for n in names if n not in WORKER and n not in CLIENT]
    if unknown:
        raise SystemExit(f"unknown patch {unknown}; known: {sorted({*WORKER, *CLIENT})}")
    applied = [n for n in names if n in side]
    for n in applied:
        side[n]()
    return applied
