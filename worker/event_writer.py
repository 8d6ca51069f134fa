"""A running job's events, written to its log in order by the worker holding the session's lease.

Text deltas arrive per token; each write is one lease-fenced script call (``emit``), so they are
coalesced: the first delta after a pause is written at once, the next ones together at most every
``CHATQ_STREAM_FLUSH_MS``, and never more than one write is in flight. Other events (tool calls and
results, retries) go out at once, after any text before them. A reader therefore sees text within
about one flush interval of the provider sending it, and a long answer costs a few dozen writes, not
one per token. Writes run in a task of their own, so stopping the turn never cuts one in half. At
the end, ``settle`` waits for a write in flight and hands what is left to the job's commit, which
appends it before the terminal event in the same step: a reply that came whole (a provider that does
not stream, the offline model, a fast stream's tail) costs no write of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from chatq.tasks.redis_pool import UNREACHABLE
from chatq.tasks.session_machine import AsyncSessionMachine

log = logging.getLogger(__name__)


class EventWriter:
    def __init__(self, machine: AsyncSessionMachine, session_id: str, job_id: str, token: str,
                 flush_seconds: float, on_stop: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.machine = machine
        self.session_id, self.job_id, self.token = session_id, job_id, token
        self.flush_seconds = flush_seconds
        self.on_stop = on_stop
        self.clock = clock
        self.call = 0  # the turn's provider call the text belongs to
        self._text: list[str] = []
        self._events: list[tuple[str, str]] = []
        self._urgent = False
        self._last = -float("inf")
        self._task: asyncio.Task | None = None
        self._starting = False
        self._nap: asyncio.Future | None = None
        self.lost = False  # the lease is gone: nothing more is written
        self.settled = False  # the commit takes the rest

    # -- what the agent reports ----------------------------------------------------------------

    def delta(self, text: str) -> None:
        """A piece of the current call's reply text."""
        if not (self.lost or self.settled):
            self._text.append(text)
            self._kick()

    def event(self, type: str, data: dict[str, Any]) -> None:
        """Any other event: written at once, after the text before it."""
        if self.lost or self.settled:
            return
        self._seal_text()
        self._events.append((type, json.dumps(data, separators=(",", ":"), ensure_ascii=False)))
        self._wake()
        self._kick()

    def next_call(self) -> None:
        """A new provider call starts: its text is told apart from the previous call's."""
        self._seal_text()
        self.call += 1

    # -- writing -------------------------------------------------------------------------------

    def _seal_text(self) -> None:
        if self._text:
            text, self._text = "".join(self._text), []
            self._events.append(("message.delta", json.dumps({"text": text, "call": self.call},
                                                             separators=(",", ":"), ensure_ascii=False)))

    def _kick(self) -> None:
        """Start writing, one loop turn from now: a reply that came whole is followed at once by the
        end of the run, whose ``settle`` then takes it for the commit before any write starts."""
        if self._task is None and not self._starting:
            self._starting = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        self._starting = False
        if self._task is None and not self.settled and (self._events or self._text):
            self._task = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        try:
            while (self._events or self._text) and not self.lost and not self.settled:
                if not self._urgent:
                    wait = self._last + self.flush_seconds - self.clock()
                    if wait > 0:
                        await self._sleep(wait)
                    if self.settled:
                        break
                self._urgent = False
                self._seal_text()
                batch, self._events = self._events, []
                self._last = self.clock()
                await self._write(batch)
        finally:
            self._task = None

    async def _write(self, batch: list[tuple[str, str]]) -> None:
        try:
            written, stop = await self.machine.emit(self.session_id, self.job_id, self.token, batch)
        except UNREACHABLE as exc:  # the log misses these; the job's result and history do not
            log.warning("could not write %d events of job %s (%s)", len(batch), self.job_id, exc)
            return
        except Exception:
            log.exception("could not write %d events of job %s", len(batch), self.job_id)
            return
        if not written:
            self.lost = True
        elif stop and self.on_stop is not None:
            self.on_stop(stop)

    async def _sleep(self, seconds: float) -> None:
        """``asyncio.sleep`` that ``_wake`` ends early (an urgent event, the end of the run)."""
        loop = asyncio.get_running_loop()
        self._nap = nap = loop.create_future()
        handle = loop.call_later(seconds, _done, nap)
        try:
            await nap
        finally:
            handle.cancel()
            self._nap = None

    def _wake(self) -> None:
        self._urgent = True
        if self._nap is not None:
            _done(self._nap)

    async def settle(self) -> list[tuple[str, str]]:
        """The run is over: wait for a write in flight, take no more events, and return those not
        yet written, for the commit to append before the terminal event."""
        self.settled = True
        self._wake()
        if self._task is not None:
            await asyncio.shield(self._task)
        if self.lost:
            return []
        self._seal_text()
        rest, self._events = self._events, []
        return rest


def _done(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
