"""The process's stream clock: one tick every ``CHATQ_STREAM_FLUSH_MS``, shared by every streamed job.

A streamed reply costs CPU per wake-up far more than per byte: a chunk read is a turn of the loop
through the SDK's transport, and a delta written is a Redis round trip. So the process wakes its
streams together: provider readers wait for the next tick before reading again (the chunks in
between wait in the socket's buffer, and one read takes them all), and the event writer sends every
job's new text in one pipeline right after them (``event_writer``). A chunk then waits at most one
interval to be read and written, whatever the number of streams.

There is no timer while nobody waits: the first waiter arms the next tick, one interval later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Pacer:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.on_tick: Callable[[], None] | None = None
        """Called at every tick, after that tick's waiters are woken: what it schedules runs after
        what they do next (the writer's flush after the readers' reads)."""
        self._waiters: list[asyncio.Future] = []
        self._timer: asyncio.TimerHandle | None = None

    async def tick(self) -> None:
        """Wait for the next tick. Cancelling the waiter (a stopped job) ends the wait at once and
        touches no other."""
        if self.seconds <= 0:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self.arm()
        await waiter

    def arm(self) -> None:
        """Make sure a tick comes (``on_tick`` wants one, with nobody waiting)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(max(self.seconds, 0), self._fire)

    def rest(self) -> None:
        """A tick's work is done (its flush came back): the next tick comes no sooner than one
        interval from now. So when that work is slow -- a busy loop, a slow store -- the clock
        slows down with it, and each tick takes more text in one go instead of piling up writes."""
        if self._timer is not None:
            loop = asyncio.get_running_loop()
            due = loop.time() + self.seconds
            if self._timer.when() < due:
                self._timer.cancel()
                self._timer = loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():  # a cancelled one
                waiter.set_result(None)
        if self.on_tick is not None:
            self.on_tick()
