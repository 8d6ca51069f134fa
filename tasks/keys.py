"""Every Redis key chatq uses, built here and nowhere else, under one namespace.

Layout (``ns`` is a namespace: ``[A-Za-z0-9_.-]``, so never ``:``, ``{`` or ``}``)::

    ns:{t}:s:<session_id>:meta|msgs|fifo|lease     a session (hash, list of messages, list of job IDs, token)
    ns:{t}:j:<job_id>:rec|ck|ev                    a job's record (hash), its checkpoint and its event log (stream)
    ns:{<batch_id>}:batch:meta|convs               a batch (hash, list of conversations)
    ns:{ns}:pending|woken|recent|batches|sessions|agents|agent-overrides|namespaces|sweep-lock|idle:<queue>|handed:<queue>|stop:<worker>
                                                   the fleet's structures of the namespace
    ns:{rl:<model>}:<window>:r|t                   a rate-limit window (requests, tokens)
    ns:idem:<key>                                  an idempotency key, used alone

**Hash tags, for Redis Cluster.** Every script call touches keys of one ``{...}`` tag only, so the
store can run on a cluster. ``t`` is the session's *bucket*: four hex digits hashed from the session
ID. A job ID starts with its session's bucket (``new_job_id``), so a job's keys share its session's
slot (take and commit touch both in one script) and ``job(job_id)`` needs nothing but the ID:
``ChatClient.get`` stays one round trip. The fleet's structures of a namespace share the tag
``{ns}``; scripts never touch them together with a session's keys (see ``session_machine``).

**No collisions.** Two different objects never get the same key, whatever the IDs hold: after the
namespace (which has no ``:``) comes a tag, then a fixed type word (``s``, ``j``, ``batch`` or a
fleet name). A session's or job's key ends with ``:<kind>``, a fixed word without ``:``, so
the ID is everything between the type word and the last ``:``: ``victim:messages`` is a session
ID like any other, its keys are ``...:s:victim:messages:meta`` and so on, never ``victim``'s.
Job and batch IDs are refused unless they are 32 hex digits, so a caller's junk never names a key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

ID = re.compile(r"^[0-9a-f]{32}$")
"""Job and batch IDs: 32 lowercase hex digits (a job's first four are its session's bucket)."""


def is_id(value: object) -> bool:
    return isinstance(value, str) and ID.fullmatch(value) is not None


def bucket(session_id: str) -> str:
    """The session's hash tag: 4 hex digits (65,536 buckets spread over a cluster's 16,384 slots)."""
    return hashlib.blake2b(session_id.encode("utf-8", "surrogatepass"), digest_size=2).hexdigest()


def new_job_id(session_id: str) -> str:
    """Unguessable (112 random bits) and carrying its session's bucket."""
    return bucket(session_id) + secrets.token_hex(14)


def new_batch_id() -> str:
    return secrets.token_hex(16)


def _checked(value: str, what: str) -> str:
    if not is_id(value):
        raise ValueError(f"not a {what} ID (32 hex digits): {value!r}")
    return value


@dataclass(frozen=True)
class Keys:
    ns: str = "chatq"

    # a session: its bucket's tag
    def _session(self, session_id: str, kind: str) -> str:
        return f"{self.ns}:{{{bucket(session_id)}}}:s:{session_id}:{kind}"

    def session(self, session_id: str) -> str:
        """Hash: created_at, updated_at, running usage, model, ttl (its own retention, if set)."""
        return self._session(session_id, "meta")

    def messages(self, session_id: str) -> str:
        """List of the history's messages, JSON."""
        return self._session(session_id, "msgs")

    def fifo(self, session_id: str) -> str:
        """List of the session's queued and running job IDs, in submission order."""
        return self._session(session_id, "fifo")

    def lease(self, session_id: str) -> str:
        """String: the token of the worker that runs the session's jobs; expires unless renewed."""
        return self._session(session_id, "lease")

    # a job: its session's bucket, which starts its ID
    def job(self, job_id: str) -> str:
        _checked(job_id, "job")
        return f"{self.ns}:{{{job_id[:4]}}}:j:{job_id}:rec"

    def checkpoint(self, job_id: str) -> str:
        _checked(job_id, "job")
        return f"{self.ns}:{{{job_id[:4]}}}:j:{job_id}:ck"

    def events(self, job_id: str) -> str:
        """Stream of the job's events; entry ``<seq>-0`` is event ``seq`` (``chatq.tasks.events``)."""
        _checked(job_id, "job")
        return f"{self.ns}:{{{job_id[:4]}}}:j:{job_id}:ev"

    @property
    def job_pattern(self) -> str:
        """SCAN pattern of every job record of the namespace."""
        return f"{self.ns}:{{*}}:j:*:rec"

    def done_channel(self, job_id: str) -> str:
        """Pub/sub channel (not a key) announcing that a job finished; ``*`` makes the pattern."""
        return f"{self.ns}:done:{job_id}"

    def doorbell(self, ident: str) -> str:
        """Stream: rung (an entry added) to wake one process's event hub from its blocking read
        (``chatq.tasks.event_hub``); expires soon after its last ring."""
        return f"{self.ns}:hub:{ident}"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel (not a key) telling every worker process of the fleet that a running job
        was asked to stop; the message is ``<job ID> <mode>`` (``CancelMode``)."""
        return f"{self.ns}:cancel"

    @property
    def follow_channel(self) -> str:
        """Pub/sub channel (not a key) telling every worker process of the fleet that a reader now
        follows a running job's events (``lua/follow.lua``); the message is the job's ID."""
        return f"{self.ns}:follow"

    # a batch: its own tag
    def batch(self, batch_id: str) -> str:
        return f"{self.ns}:{{{_checked(batch_id, 'batch')}}}:batch:meta"

    def batch_conversations(self, batch_id: str) -> str:
        return f"{self.ns}:{{{_checked(batch_id, 'batch')}}}:batch:convs"

    def idempotency(self, key: str) -> str:
        """String: ``<job_id> <session_id>`` of the job a key named first. Used alone, so its tag is moot."""
        return f"{self.ns}:idem:{key}"

    # the fleet's structures of the namespace: one tag
    def _fleet(self, name: str) -> str:
        return f"{self.ns}:{{{self.ns}}}:{name}"

    @property
    def sessions(self) -> str:
        """ZSET of session IDs scored by creation time: the listing."""
        return self._fleet("sessions")

    @property
    def pending(self) -> str:
        """ZSET of sessions that were given work, scored by when (ms, Redis clock): the sweeper's input."""
        return self._fleet("pending")

    @property
    def recent(self) -> str:
        """ZSET of the namespace's recently finished job IDs, scored by when (ms): ``jobs list``, ``top``."""
        return self._fleet("recent")

    @property
    def batches(self) -> str:
        """ZSET of the namespace's newest batch IDs, scored by creation (ms), capped: the console's list."""
        return self._fleet("batches")

    @property
    def woken(self) -> str:
        """HASH of the stalled sessions the sweeper woke, with their back-off (``SessionMachine.sweep``)."""
        return self._fleet("woken")

    @property
    def agents(self) -> str:
        return self._fleet("agents")

    @property
    def agent_overrides(self) -> str:
        """HASH of agent name -> its ``allow_overrides`` as JSON, published by workers at start."""
        return self._fleet("agent-overrides")

    @property
    def namespaces(self) -> str:
        """Set of namespaces (tenants) that producers use, kept under the base namespace for sweeping."""
        return self._fleet("namespaces")

    @property
    def sweep_lock(self) -> str:
        return self._fleet("sweep-lock")

    def idle(self, queue: str) -> str:
        """ZSET of worker processes of a Celery queue waiting to be handed sessions (``<host:pid>#<room>``),
        scored by deadline."""
        return self._fleet(f"idle:{queue}")

    def handed(self, queue: str) -> str:
        """LIST of ``<namespace> <session_id> <job_id>`` handed to the queue's waiting processes."""
        return self._fleet(f"handed:{queue}")

    def stop(self, worker: str) -> str:
        """LIST a worker process pushes to on warm shutdown to wake its own hand-off listener."""
        return self._fleet(f"stop:{worker}")

    def rate(self, model: str, window: int) -> tuple[str, str]:
        """A rate-limit window's request and token counters; one tag per model."""
        base = f"{self.ns}:{{rl:{model}}}:{window}"
        return f"{base}:r", f"{base}:t"
