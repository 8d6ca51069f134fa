"""A job's event log, read: every event after a ``seq``, exactly once and in order, until the
terminal one (``JobEvent`` lists the types).

The log is a Redis Stream per job (``Keys.events``) whose entry IDs are ``<seq>-0``, so resuming
after event ``n`` is ``XREAD`` from ``n-0``: a reader that attaches late or reconnects misses and
repeats nothing. Its writers are the session scripts (``job.started``, ``job.restarted`` and the
terminal events, in the same step as the state change they announce) and the worker holding the
session's lease (``chatq.worker.event_writer``: text deltas, tool calls and results, retries).
The log expires with the job's record (``CHATQ_RESULT_TTL`` after it finishes).

A follower announces itself first (``lua/follow.lua``): a job's provider calls stream only once
somebody follows it (``CHATQ_STREAM=auto``), and a streamed call's text is written as it comes only
while somebody does (``CHATQ_STREAM_TEXT``), else whole with the terminal event, so a job nobody
watches costs neither a stream's reading nor a write per delta.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import NamedTuple

import redis
import redis.asyncio as aioredis

from .errors import EventsGone, JobNotFound, WaitTimeout
from .event_hub import READ_COUNT, EventHub, Subscription
from .job_store import decode_job
from .keys import Keys, is_id
from .models import TERMINAL_EVENTS, Job, JobEvent
from .scripts import cached



def parse(entries: list) -> list[JobEvent]:
    """Stream entries ``(id, {t, d})`` as events."""
    return [JobEvent(seq=int(eid.partition("-")[0]), type=f["t"], data=json.loads(f["d"])) for eid, f in entries]


class RawEvent(NamedTuple):
    """An event whose data stays the JSON text its writer stored: what a reader that only passes it on
    (the HTTP API's event stream) needs, without decoding and encoding it again."""

    seq: int
    type: str
    data: str

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


def parse_raw(entries: list) -> list[RawEvent]:
    return [RawEvent(int(eid.partition("-")[0]), f["t"], f["d"]) for eid, f in entries]


class Cursor:
    """Where a reader is in one job's log, and the checks that keep its promise: no gap, no repeat,
    nothing after the terminal event; a log that is gone is an error, never an endless wait."""

    def __init__(self, job_id: str, after: int = 0, raw: bool = False):
        if not is_id(job_id):
            raise JobNotFound(f"unknown or expired job: {job_id}")
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValueError(f"after must be a sequence number (an int >= 0), not {after!r}")
        self.job_id = job_id
        self.after = after
        self.done = False
        self.parse = parse_raw if raw else parse

    @property
    def start(self) -> str:
        return f"{self.after}-0"

    def take(self, entries: list) -> list:
        events = self.parse(entries)
        if events and events[0].seq != self.after + 1:
            raise EventsGone(f"events {self.after + 1}-{events[0].seq - 1} of job {self.job_id} were trimmed from "
                             f"its log (CHATQ_EVENTS_MAXLEN); read on from {events[0].seq - 1}, or get the job")
        for i, event in enumerate(events):
            if event.terminal:
                self.done = True
                events = events[:i + 1]
                break
        if events:
            self.after = events[-1].seq
        return events

    def silence(self, log_exists: bool, last_seq: int, job: Job | None) -> None:
        """Nothing new came: is there anything left to wait for?"""
        if job is None and not log_exists:
            raise JobNotFound(f"unknown or expired job: {self.job_id}")
        if log_exists and last_seq and self.after >= last_seq and job is not None and job.status.finished:
            self.done = True  # the caller asked after the terminal event: nothing more will come
        elif not log_exists and job is not None and job.status.finished:
            raise EventsGone(f"the event log of job {self.job_id} has expired; the job is {job.status.value}: "
                             "get it for its result")


def _last_seq(entries: list) -> int:
    return int(entries[0][0].partition("-")[0]) if entries else 0


def _follow_call(keys: Keys, job_id: str, channel: str) -> dict[str, list]:
    """``lua/follow.lua``'s KEYS and ARGV."""
    return {"keys": [keys.job(job_id)], "args": [job_id, channel]}


class EventLog:
    """Reads job event logs with the blocking client (``ChatClient.stream``, the CLI)."""

    def __init__(self, r: redis.Redis, keys: Keys, block_seconds: float = 2.0, fleet: Keys | None = None):
        self.r = r
        self.keys = keys
        self.block_ms = max(1, int(block_seconds * 1000))
        self.follow_channel = (fleet or keys).follow_channel  # the workers' channel: the fleet's

    def announce(self, job_id: str) -> None:
        """Tell the job's worker that a reader follows it, so its text is written as it streams."""
        cached(self.r, "follow")(**_follow_call(self.keys, job_id, self.follow_channel))

    def read(self, job_id: str, after: int = 0, count: int = READ_COUNT) -> list[JobEvent]:
        """The events after ``after`` that are there now (at most ``count``), without waiting."""
        cursor = Cursor(job_id, after)
        return cursor.take(self._xread(cursor, count, None))

    def follow(self, job_id: str, after: int = 0, timeout: float | None = None) -> Iterator[JobEvent]:
        """Every event after ``after`` as it is written, up to and including the terminal one."""
        cursor = Cursor(job_id, after)
        self.announce(job_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        block: int | None = None  # the first read does not wait: a log that is gone is said at once
        while not cursor.done:
            events = cursor.take(self._xread(cursor, READ_COUNT, block))
            yield from events
            if events:
                continue
            self._judge(cursor)
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"job {job_id} had no terminal event within {timeout}s")
            left = self.block_ms if deadline is None else int((deadline - time.monotonic()) * 1000)
            block = max(1, min(self.block_ms, left))

    def _xread(self, cursor: Cursor, count: int, block: int | None) -> list:
        found = self.r.xread({self.keys.events(cursor.job_id): cursor.start}, count=count, block=block)
        return found[0][1] if found else []

    def _judge(self, cursor: Cursor) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.xrevrange(self.keys.events(cursor.job_id), count=1)
        pipe.hgetall(self.keys.job(cursor.job_id))
        last, fields = pipe.execute()
        cursor.silence(bool(last), _last_seq(last), decode_job(fields) if fields else None)


class AsyncEventLog:
    """The same reads on ``redis.asyncio``, for the HTTP API's event streams. With a ``hub``, a
    follower's waits for new events are the hub's one read for all (``chatq.tasks.event_hub``)."""

    def __init__(self, r: aioredis.Redis, keys: Keys, block_seconds: float = 2.0, hub: EventHub | None = None,
                 fleet: Keys | None = None):
        self.r = r
        self.keys = keys
        self.block_ms = max(1, int(block_seconds * 1000))
        self.hub = hub
        self.follow_channel = (fleet or keys).follow_channel

    async def announce(self, job_id: str) -> None:
        """``EventLog.announce``."""
        await cached(self.r, "follow")(**_follow_call(self.keys, job_id, self.follow_channel))

    async def opening(self, job_id: str, after: int = 0) -> bool:
        """Whether anything can follow seq ``after``, found without waiting: the checks ``follow``
        makes on its first read, so their errors (``JobNotFound``, ``EventsGone``) can be answered
        before a response starts. False: the reader is past the terminal event."""
        cursor = Cursor(job_id, after)
        pipe = self.r.pipeline(transaction=False)
        pipe.xread({self.keys.events(job_id): cursor.start}, count=1)
        pipe.xrevrange(self.keys.events(job_id), count=1)
        pipe.hgetall(self.keys.job(job_id))
        found, last, fields = await pipe.execute()
        if cursor.take(found[0][1] if found else []):  # raises EventsGone if trimmed past ``after``
            return True
        cursor.silence(bool(last), _last_seq(last), decode_job(fields) if fields else None)
        return not cursor.done

    async def follow(self, job_id: str, after: int = 0, raw: bool = False) -> AsyncIterator[JobEvent | RawEvent | None]:
        """Like ``EventLog.follow``, without a deadline; yields None after each quiet wait (the
        caller's cue for a keep-alive). ``raw``: ``RawEvent``s, their data left as stored."""
        cursor = Cursor(job_id, after, raw)
        key = self.keys.events(job_id)
        await self.announce(job_id)
        block: int | None = None  # the first reads do not wait: a log that is gone is said at once
        sub: Subscription | None = None
        try:
            while not cursor.done:
                if block is not None and self.hub is not None:
                    sub = sub or self.hub.subscribe(key, cursor.after)
                    entries = await sub.next() or []
                else:
                    found = await self.r.xread({key: cursor.start}, count=READ_COUNT, block=block)
                    entries = found[0][1] if found else []
                events = cursor.take(entries)
                for event in events:
                    yield event
                if events:
                    continue
                pipe = self.r.pipeline(transaction=False)
                pipe.xrevrange(key, count=1)
                pipe.hgetall(self.keys.job(job_id))
                last, fields = await pipe.execute()
                cursor.silence(bool(last), _last_seq(last), decode_job(fields) if fields else None)
                if block is not None and not cursor.done:
                    yield None
                block = self.block_ms
                await asyncio.sleep(0)
        finally:
            if sub is not None:
                sub.close()
