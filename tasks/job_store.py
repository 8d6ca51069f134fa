"""Job records: a Redis hash per job, flat scalars plus JSON for nested fields.

Status transitions happen only inside the session queue's Lua scripts; this module reads records
and waits for them to finish.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from .errors import JobNotFound, WaitTimeout
from .keys import Keys, is_id
from .models import Job, JobStatus
from .redis_pool import UNREACHABLE

log = logging.getLogger(__name__)

_listeners: dict[tuple[int, str], DoneListener] = {}
_listeners_lock = threading.Lock()
_JSON_FIELDS = ("result", "error", "last_error", "metadata", "webhook", "op", "params")
PARTS_FIELD = "message_parts"
"""Where a message given as content parts is stored, as JSON; a string message stays in ``message``
as it is. A field of its own, so no stored string is ever mistaken for JSON (a user may well send
the text ``[1, 2]``), and records written before content parts read as they did. The event log's
Lua (``lua/lib/events.lua``, ``JOB_RAW``) splices it into a terminal event's job as ``message``."""
_CHECK_EVERY = 60.0
"""Seconds between the listener's checks of every job its process waits for (one pipelined status
read each): a safety net for a notification lost without the listener's connection noticing (a
silent network drop); every reconnect wakes all waiters anyway. Waiting threads never wake on a
timer themselves: 3,000 threads each re-reading every 5 s burned more than a core, and even spread
out a thread's wake-up costs ~0.5 ms among thousands (``bench/wait_cost.py``)."""
_RETRY_EVERY = 1.0  # seconds between retries while Redis is unreachable
_READ_BATCH = 500  # jobs read in one pipeline by the listener


def encode_job(job: Job) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in job.model_dump(mode="json").items():
        if value is None:
            continue
        if name == "message" and isinstance(value, list):
            out[PARTS_FIELD] = json.dumps(value, separators=(",", ":"))
        else:
            out[name] = json.dumps(value, separators=(",", ":")) if name in _JSON_FIELDS else str(value)
    return out


def decode_job(fields: dict[str, str]) -> Job:
    data: dict[str, Any] = dict(fields)
    for name in _JSON_FIELDS:
        if name in data:
            data[name] = json.loads(data[name])
    if PARTS_FIELD in data:
        data["message"] = json.loads(data.pop(PARTS_FIELD))
    return Job.model_validate(data)


class JobStore:
    def __init__(self, r: redis.Redis, keys: Keys):
        self.r = r
        self.keys = keys

    def get(self, job_id: str) -> Job | None:
        """The job, or None if unknown, expired or not a job ID at all."""
        if not is_id(job_id):
            return None
        fields = self.r.hgetall(self.keys.job(job_id))
        return decode_job(fields) if fields else None

    def get_many(self, job_ids: list[str]) -> list[Job | None]:
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            if is_id(job_id):
                pipe.hgetall(self.keys.job(job_id))
        found = iter(pipe.execute())
        return [(decode_job(f) if (f := next(found)) else None) if is_id(j) else None for j in job_ids]

    @property
    def _done(self) -> DoneListener:
        with _listeners_lock:
            key = (id(self.r), self.keys.ns)
            if key not in _listeners:
                _listeners[key] = DoneListener(self.r, self.keys.done_channel("*"), self.keys.job)
            return _listeners[key]

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job finishes: woken by the commit's PUBLISH, not by polling.

        The job is read once; after that the waiting thread sleeps until the shared listener wakes
        it, usually with the job's record (``DoneListener``), or until ``timeout``: a waiting thread
        costs nothing while it waits.

        A Redis outage is waited out until ``timeout``: reads are retried and the shared listener
        resubscribes. A timeout during an outage says for how long Redis was unreachable. A read on
        a stalled Redis takes up to ``CHATQ_REDIS_SOCKET_TIMEOUT``, so the timeout can overrun by that.
        """
        if not is_id(job_id):
            raise JobNotFound(f"unknown or expired job: {job_id}")
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = self._done
        waiter = listener.register(job_id)
        down_since: float | None = None
        fields: dict[str, str] | None = None
        try:
            while True:
                if fields is None:
                    try:
                        fields = self.r.hgetall(self.keys.job(job_id))
                    except UNREACHABLE as exc:
                        now = time.monotonic()
                        if down_since is None:  # the listener may have lost Redis while this slept
                            down_since = min(now, listener.down_since or now)
                        if deadline is not None and now >= deadline:
                            raise WaitTimeout(f"gave up waiting for job {job_id} after {timeout:g} s: "
                                              f"Redis unreachable for {now - down_since:.0f} s ({exc})") from exc
                        fields = waiter.wait(_RETRY_EVERY if deadline is None else min(deadline - now, _RETRY_EVERY))
                        continue
                    down_since = None
                if "status" not in fields:
                    raise JobNotFound(f"unknown or expired job: {job_id}")
                status = JobStatus(fields["status"])
                if status.finished:
                    return decode_job(fields)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeout(f"job {job_id} still {status.value} after {timeout}s")
                fields = waiter.wait(remaining)
        finally:
            listener.unregister(job_id, waiter)


class Waiter:
    """One ``JobStore.wait`` call as the listener sees it: an event, and the job's record when the
    listener read it for the waiter after its notification."""

    __slots__ = ("_event", "_fields")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._fields: dict[str, str] | None = None

    def wake(self, fields: dict[str, str] | None = None) -> None:
        self._fields = fields
        self._event.set()

    def wait(self, timeout: float | None) -> dict[str, str] | None:
        """The record the listener read, or None (woken without it, or timed out): read it yourself."""
        self._event.wait(timeout)
        self._event.clear()
        fields, self._fields = self._fields, None
        return fields


class DoneListener:
    """One pub/sub connection per process and namespace, shared by every waiting thread.

    A connection per wait cost a TCP connect, a pooled connection held for the whole wait, and a
    socket per thread to poll; here one listener thread wakes the waiters. After a burst of
    notifications it reads the finished jobs that this process waits for in one pipeline and
    hands each waiter its record: a woken thread then only decodes it, instead of thousands taking
    turns at the GIL and the connection pool for a read each (``bench/wait_cost.py``). Every
    ``check_every`` seconds (``_CHECK_EVERY``; tests shorten it) it also reads the status of every
    job waited for, pipelined, and wakes the waiters of those that finished or are gone without a
    notification.

    It outlives Redis outages: it keeps (re)subscribing, and wakes every waiter whenever Redis
    confirms a subscription (the first, and every resubscribe after a reconnect, including those
    redis-py makes silently inside a read), since notifications published before it went unseen:
    each waiter then re-reads its job. A failed read wakes the waiters without their records; they
    read for themselves and ride the outage out.
    """

    def __init__(self, r: redis.Redis, pattern: str, record_key: Callable[[str], str],
                 check_every: float = _CHECK_EVERY):
        self._r = r
        self._check_every = check_every
        self._record_key = record_key
        self._waiters: dict[str, set[Waiter]] = {}
        self._lock = threading.Lock()
        self._pattern = pattern
        self._prefix = pattern.removesuffix("*")
        self.down_since: float | None = None
        """When (monotonic) the listener lost Redis, while it has not resubscribed since."""
        # Subscribe confirmations are wanted: each says "from here on nothing is missed".
        self._pubsub = r.pubsub(ignore_subscribe_messages=False)
        self._thread = threading.Thread(target=self._run, name="chatq-job-notifications", daemon=True)
        self._thread.start()

    def register(self, job_id: str) -> Waiter:
        waiter = Waiter()
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(waiter)
        return waiter

    def unregister(self, job_id: str, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[job_id]

    def _run(self) -> None:
        failing = False
        next_check = time.monotonic() + self._check_every
        while True:
            try:
                if not self._pubsub.subscribed:
                    self._pubsub.psubscribe(self._pattern)
                finished, confirmed = self._drain()
            except Exception as exc:  # the thread must live on, or every waiter waits for its timeout
                if not failing:  # waiters see the outage themselves; this explains slower wake-ups
                    log.log(logging.INFO if isinstance(exc, UNREACHABLE) else logging.ERROR,
                            "job notifications interrupted (%s); resubscribing until Redis answers", exc,
                            exc_info=not isinstance(exc, UNREACHABLE))
                failing = True
                if isinstance(exc, UNREACHABLE) and self.down_since is None:
                    self.down_since = time.monotonic()
                time.sleep(_RETRY_EVERY)
                continue
            if confirmed:
                if failing:
                    log.info("job notifications resumed")
                failing, self.down_since = False, None
                self._wake_all()
                continue
            if failing and self.down_since is None:  # an error that was not an outage, and it passed
                failing = False
            self._deliver(finished)
            if time.monotonic() >= next_check:
                try:
                    self._deliver(self._unannounced())
                except Exception as exc:  # an outage: the subscription's errors tell it, and waiters' reads
                    log.debug("could not check the jobs waited for: %s", exc)
                next_check = time.monotonic() + self._check_every

    def _drain(self) -> tuple[list[str], bool]:
        """The jobs announced (waiting up to a second for the first, then taking what has arrived,
        up to a batch), and whether a subscription was confirmed meanwhile."""
        finished: list[str] = []
        confirmed = False
        # redis-py reconnects and resubscribes inside this call once Redis answers again.
        message = self._pubsub.get_message(timeout=1.0)
        while message is not None:
            if message["type"] == "pmessage":
                finished.append(message["channel"].removeprefix(self._prefix))
            elif message["type"] == "psubscribe":
                confirmed = True
            if len(finished) >= _READ_BATCH:
                break
            message = self._pubsub.get_message(timeout=0)
        return finished, confirmed

    def _unannounced(self) -> list[str]:
        """The jobs waited for that finished (or are gone) though no notification said so."""
        with self._lock:
            waited = list(self._waiters)
        found = []
        for i in range(0, len(waited), _READ_BATCH):
            chunk = waited[i:i + _READ_BATCH]
            pipe = self._r.pipeline(transaction=False)
            for job_id in chunk:
                pipe.hget(self._record_key(job_id), "status")
            found += [job_id for job_id, status in zip(chunk, pipe.execute())
                      if status is None or JobStatus(status).finished]
        return found

    def _deliver(self, finished: list[str]) -> None:
        """Read the finished jobs that have waiters, pipelined, and wake each waiter with its record."""
        with self._lock:
            wanted = [job_id for job_id in dict.fromkeys(finished) if job_id in self._waiters]
        for i in range(0, len(wanted), _READ_BATCH):
            chunk = wanted[i:i + _READ_BATCH]
            try:
                pipe = self._r.pipeline(transaction=False)
                for job_id in chunk:
                    pipe.hgetall(self._record_key(job_id))
                records: list[dict[str, str] | None] = pipe.execute()
            except Exception:  # the waiters read for themselves, and see the outage if it is one
                records = [None] * len(chunk)
            with self._lock:
                for job_id, fields in zip(chunk, records):
                    for waiter in self._waiters.get(job_id, ()):
                        waiter.wake(fields)

    def _wake_all(self) -> None:
        with self._lock:
            for waiters in self._waiters.values():
                for waiter in waiters:
                    waiter.wake()
