"""Running jobs' events, written to their logs in order by the worker holding each session's lease.

Text deltas arrive per token, and a write is a lease-fenced script call (``emit``), so they are
coalesced twice: per job, the text between two writes becomes one ``message.delta``; per process,
one ``EventFlusher`` writes every job's pending events together, one ``emit`` per job in one
pipeline, at each tick of the process's stream clock (``pacer``: every ``CHATQ_STREAM_FLUSH_MS``,
right after the provider readers woken by the same tick have handed over their text). So a reader
sees text within about one interval of the provider sending it, and a thousand streams cost a round
trip per interval, not one each per delta.

Not everything waits for the tick: a job's first text after a pause (its first delta, above all) and
its other events (tool calls and results, retries) are written at the next turn of the loop, after
any text before them. One flush is in flight at a time, so a job's writes never overtake each other.
The flush runs in a task of its own, so stopping a turn never cuts one in half; the tick after it
waits one interval from its return (``Pacer.rest``), so a slow store or a busy loop slows the clock
instead of piling up writes. At the end, a job's ``settle`` waits for a flush carrying its events
and hands what is left to the job's commit, which appends it before the terminal event in the same
step: a reply that came whole (a provider that does not stream, the offline model, a fast stream's
tail) costs no write of its own.

Text is written as it streams only while a reader follows the job (``CHATQ_STREAM_TEXT=followed``,
the default: ``chatq.tasks.events`` announces each reader, and ``follow`` is told); until then it
is kept for the commit, so a job nobody watches costs one write for its whole reply, not one per
tick. A reader that arrives mid-reply gets the text so far in one delta, then the rest as it comes.
The provider's reads are paced by the writer too (``pace``): on the process's clock while followed,
else more slowly (``IdleReads``), which a new follower cuts short. ``followed`` also decides whether
a provider call streams at all under ``CHATQ_STREAM=auto`` (``Agent.complete``); a job submitted
with ``stream=True`` starts followed.
"""

from __future__ import annotations

import asyncio
import json
import json.encoder
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from chatq.tasks.redis_pool import UNREACHABLE
from chatq.tasks.session_machine import AsyncSessionMachine, Emit

from .pacer import Pacer

log = logging.getLogger(__name__)

_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_json_string = json.encoder.encode_basestring  # a str as _json writes it


class IdleReads(NamedTuple):
    """How long an unfollowed job's provider stream waits between reads: its text waits for the
    commit anyway, and each read is a wake-up of the loop. The wait grows with the reply's age
    (``share`` of the time since its first text, from one tick of the process's clock up to ``cap``
    seconds), so the end of a reply is seen at most that share of its time late: a short reply is
    read as often as a followed one, a long one a few times a second. A stop cuts the wait short,
    and so does a new follower."""

    share: float = 0.1
    cap: float = 0.5


EmitMany = Callable[[list[Emit]], Awaitable[list[tuple[bool, str] | Exception]]]
"""``chatq.tasks.session_machine.emit_many`` on the process's client: one reply per write."""


class EventFlusher:
    """The process's one writer of running jobs' events (see the module's docstring)."""

    def __init__(self, emit_many: EmitMany, pacer: Pacer, timeout: float | None = None,
                 clock: Callable[[], float] = time.monotonic, idle: IdleReads = IdleReads()):
        self.emit_many = emit_many
        self.pacer = pacer
        self.idle = idle
        self.timeout = timeout  # a flush's bound (its client may read replies without one)
        self.clock = clock
        pacer.on_tick = self._tick
        self._dirty: dict[EventWriter, None] = {}  # in the order they had something to write
        self._pending = False  # a flush is due
        self._ticked = False  # a tick made it due
        self._starting = False
        self._task: asyncio.Task | None = None

    def writer(self, machine: AsyncSessionMachine, session_id: str, job_id: str, token: str,
               on_stop: Callable[[str], None] | None = None, followed: bool = True) -> EventWriter:
        """A job's writer: what its run reports goes through this flusher."""
        return EventWriter(self, machine, session_id, job_id, token, on_stop, followed)

    def want(self, writer: EventWriter, urgent: bool) -> None:
        """``writer`` has events to write: soon if ``urgent``, else at the next tick."""
        self._dirty[writer] = None
        if urgent:
            self._due()
        else:
            self.pacer.arm()

    def drop(self, writer: EventWriter) -> None:
        self._dirty.pop(writer, None)

    def _tick(self) -> None:
        self._ticked = True
        self._due()

    def _due(self) -> None:
        """Flush soon: two turns of the loop from now, so that the readers woken by the same tick
        hand over their text first, and a run that ended meanwhile settles first (its tail goes
        with its commit instead of a write of its own). A flush in flight goes round again."""
        self._pending = True
        if self._task is None and not self._starting:
            self._starting = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._starting = False
        if self._task is None:
            if self._dirty:
                self._task = asyncio.ensure_future(self._flush())
            else:
                self._ticked = False

    async def _flush(self) -> None:
        try:
            while self._pending and self._dirty:
                self._pending = False
                ticked, self._ticked = self._ticked, False
                await self._write_all()
                if ticked:  # the next tick waits one interval from now (``Pacer.rest``)
                    self.pacer.rest()
        finally:
            self._task = None
            if self._dirty:  # what came during the last round waits for the next tick
                self.pacer.arm()

    async def _write_all(self) -> None:
        writers, self._dirty = list(self._dirty), {}
        now = self.clock()
        batches = [(w, batch) for w in writers if (batch := w.take(now))]
        if not batches:
            return
        done = asyncio.get_running_loop().create_future()
        for w, _ in batches:
            w.in_flight = done
        try:
            try:
                async with asyncio.timeout(self.timeout):
                    replies: list[tuple[bool, str] | Exception] = await self.emit_many(
                        [(w.machine, w.keys, [*w.args, *(x for e in batch for x in e)]) for w, batch in batches])
            except (*UNREACHABLE, TimeoutError) as exc:  # the logs miss these; the jobs' results and history do not
                log.warning("could not write the events of %d jobs (%s)", len(batches), exc)
                replies = [exc] * len(batches)
            except Exception as exc:
                log.exception("could not write the events of %d jobs", len(batches))
                replies = [exc] * len(batches)
            for (w, batch), reply in zip(batches, replies):
                w.written(batch, reply)
        finally:  # whatever happened, no settle waits on this flush any longer
            for w, _ in batches:
                w.in_flight = None
            done.set_result(None)


class EventWriter:
    """One running job's events, as its agent reports them (``delta``, ``event``, ``next_call``);
    its flusher writes them. Made by ``EventFlusher.writer``."""

    def __init__(self, flusher: EventFlusher, machine: AsyncSessionMachine, session_id: str, job_id: str,
                 token: str, on_stop: Callable[[str], None] | None = None, followed: bool = True):
        self.flusher = flusher
        self.machine = machine
        self.session_id, self.job_id, self.token = session_id, job_id, token
        self.on_stop = on_stop
        self.keys, self.args = machine.calls.emit(session_id, job_id, token, [])  # the events go after
        self.call = 0  # the turn's provider call the text belongs to
        self._text: list[str] = []
        self._events: list[tuple[str, str]] = []
        self._last = -float("inf")  # when its last write was sent
        self.in_flight: asyncio.Future | None = None  # the flush carrying its last write
        self.lost = False  # the lease is gone: nothing more is written
        self.settled = False  # the commit takes the rest
        self.followed = followed  # a reader follows the job: its text is written as it comes
        self._idle_wait: asyncio.Future | None = None  # a read waiting, unfollowed
        self._began: float | None = None  # when the reply's first text came

    # -- what the agent reports ----------------------------------------------------------------

    def delta(self, text: str) -> None:
        """A piece of the current call's reply text."""
        if not (self.lost or self.settled):
            self._text.append(text)
            if self._began is None:
                self._began = self.flusher.clock()
            if self.followed:
                self.flusher.want(self, self.flusher.clock() - self._last >= self.flusher.pacer.seconds)

    def follow(self) -> None:
        """A reader follows the job now: what came so far is written at once, the rest as it comes."""
        if not self.followed:
            self.followed = True
            if self._text or self._events:
                self.flusher.want(self, True)
            if self._idle_wait is not None and not self._idle_wait.done():
                self._idle_wait.set_result(None)  # the provider's next read comes now, not at the slow tick

    async def pace(self, socket: asyncio.Transport | None = None) -> None:
        """Wait until the provider's stream should be read again: the next tick of the process's
        clock while followed, longer otherwise (``IdleReads``; a new follower ends that wait).
        Unfollowed, the reply's ``socket`` is not read during the wait either, so the kernel gathers
        its chunks for one read; a followed read keeps it read, its chunks ready for the tick's write."""
        f = self.flusher
        if self.followed:
            await f.pacer.tick()
            return
        age = f.clock() - self._began if self._began is not None else 0.0
        delay = min(f.idle.cap, f.idle.share * age)
        if socket is not None:
            socket.pause_reading()
        try:
            if delay <= f.pacer.seconds:
                await f.pacer.tick()
                return
            loop = asyncio.get_running_loop()
            self._idle_wait = waiter = loop.create_future()
            timer = loop.call_later(delay, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._idle_wait = None
        finally:
            if socket is not None and not socket.is_closing():
                socket.resume_reading()

    def event(self, type: str, data: dict[str, Any]) -> None:
        """Any other event: written at once, after the text before it."""
        if self.lost or self.settled:
            return
        self._seal_text()
        self._events.append((type, _json(data)))
        self.flusher.want(self, True)

    def next_call(self) -> None:
        """A new provider call starts: its text is told apart from the previous call's."""
        self._seal_text()
        self.call += 1

    # -- what the flusher does -----------------------------------------------------------------

    def _seal_text(self) -> None:
        if self._text:
            text, self._text = "".join(self._text), []
            # json.dumps({"text": text, "call": call}, ...) as _json writes it, a tenth of the cost
            self._events.append(("message.delta", f'{{"text":{_json_string(text)},"call":{self.call:d}}}'))

    def take(self, now: float) -> list[tuple[str, str]]:
        """The events to write now (none once the run settled or the lease is lost)."""
        if self.lost or self.settled:
            return []
        self._seal_text()
        batch, self._events = self._events, []
        if batch:
            self._last = now
        return batch

    def written(self, batch: list[tuple[str, str]], reply: tuple[bool, str] | Exception) -> None:
        if isinstance(reply, (*UNREACHABLE, TimeoutError)):
            return  # said once for the whole flush
        if isinstance(reply, Exception):
            log.error("could not write %d events of job %s: %r", len(batch), self.job_id, reply)
            return
        written, stop = reply
        if not written:
            self.lost = True
        elif stop and self.on_stop is not None:
            self.on_stop(stop)

    async def settle(self) -> list[tuple[str, str]]:
        """The run is over: take no more events, wait for a flush carrying some, and return those
        not yet written, for the commit to append before the terminal event."""
        self.settled = True
        self.flusher.drop(self)
        if self.in_flight is not None:
            await asyncio.shield(self.in_flight)
        if self.lost:
            return []
        self._seal_text()
        rest, self._events = self._events, []
        return rest


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
