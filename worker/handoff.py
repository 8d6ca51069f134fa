"""A worker process with room for more sessions waits here to be handed them directly, instead of
by Celery message.

The process's listener keeps it registered in ``idle:{queue}`` with its room (``<host:pid>#<room>``),
scored by a deadline on Redis's clock that each of its round trips renews, and blocks on the
queue's ``handed`` list. A producer whose job is alone in an unheld FIFO pushes
``<namespace> <session_id> <job_id>`` there (``handoff_give``, right after the submit) if the
registered processes have more room than items are already there, and Redis gives it to the
process that has waited longest: no Celery publish, delivery or ack for that job. With nobody
waiting the producer publishes a wake-up as before.

One list per queue (every script names its keys up front, as a cluster needs, so a producer cannot
pick one process's own inbox), and any listener takes whatever is there, up to its room, in the
same round trip as its BLPOP; so a burst of any size waits at most one round trip, and the
registration stays live between round trips however busy the process's loop is. A process that fills up, or shuts
down, deregisters (``handoff_stop``). An item handed while the only waiters counted were a dead
process's (registrations outlive it by ``wait_seconds`` plus ``GRACE``) waits for the next listener,
or for the sweeper, like any queued session without a lease.

The cost is per process, not per session: one round trip per wait of up to ``wait_seconds``, which
takes every session handed meanwhile.
"""

from __future__ import annotations

from typing import NamedTuple

import redis.asyncio as aioredis

from chatq.tasks.keys import Keys
from chatq.tasks.scripts import load

GRACE = 1.0
"""Seconds a registration outlives its round trip's wait, so it stays live until the next one."""


class Handed(NamedTuple):
    namespace: str
    session_id: str
    job_id: str | None


def parse(item: str) -> Handed:
    namespace, session_id, job_id = (item.split(" ") + ["", ""])[:3]
    return Handed(namespace, session_id, job_id or None)


class Handoff:
    """The listener's side; ``r`` should be a client of its own, since its BLPOP holds a connection."""

    def __init__(self, r: aioredis.Redis, keys: Keys, identity: str, queue: str, wait_seconds: float):
        self.r = r
        self.keys = keys
        self.identity = identity
        self.queue = queue
        self.wait_seconds = wait_seconds
        self._wait = load(r, "handoff_wait")
        self._leave = load(r, "handoff_stop")
        self._waiter = ""  # this process's registration, "<host:pid>#<room>"
        self.stopped = False

    async def next_sessions(self, room: int) -> list[Handed]:
        """Wait up to ``wait_seconds`` for sessions handed to this process, which has ``room`` free
        slots: every one handed meanwhile, up to ``room`` (none on timeout or warm shutdown). One
        round trip: renew the registration, wait, take the rest."""
        if self.stopped or room <= 0:
            return []
        idle, handed, stop = self.keys.idle(self.queue), self.keys.handed(self.queue), self.keys.stop(self.identity)
        waiter, previous = f"{self.identity}#{room}", self._waiter
        self._waiter = waiter
        pipe = self.r.pipeline(transaction=False)
        await self._wait(keys=[idle], args=[int((self.wait_seconds + GRACE) * 1000), waiter, previous], client=pipe)
        pipe.blpop([handed, stop], timeout=self.wait_seconds)
        if room > 1:
            pipe.lpop(handed, room - 1)
        _, popped, *rest = await pipe.execute()
        items = [popped[1]] if popped and popped[0] == handed else []
        if rest and rest[0]:
            items += rest[0]
        return [parse(item) for item in items]

    async def pause(self) -> None:
        """The process is full: deregister, so producers publish wake-ups instead (Celery keeps them)."""
        await self._deregister(wake=False)

    async def stop(self) -> None:
        """Warm shutdown: deregister this process's waiters and wake its listener; nothing new reaches it."""
        self.stopped = True
        await self._deregister(wake=True)

    async def _deregister(self, wake: bool) -> None:
        waiter, self._waiter = self._waiter, ""
        await self._leave(keys=[self.keys.idle(self.queue), self.keys.stop(self.identity)],
                         args=["1" if wake else "0", *([waiter] if waiter else [])])
