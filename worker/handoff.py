"""A worker process with room for more sessions waits here to be handed them directly, instead of
by Celery message.

The process's listener registers one waiter per free slot (up to ``SLOTS``) in ``idle:{queue}``,
scored by a deadline on Redis's clock, and blocks on the queue's ``handed`` list. A producer whose
job is alone in an unheld FIFO pushes ``<namespace> <session_id> <job_id>`` there
(``handoff_give``, right after the submit) if more waiters are registered than items are already
there, and Redis gives it to the process that has waited longest: no Celery publish, delivery or
ack for that job. With nobody waiting the producer publishes a wake-up as before.

One list per queue (every script names its keys up front, as a cluster needs, so a producer cannot
pick one process's own inbox). The count a producer trusts can run ahead of the waiters really
blocked only between a BLPOP and its deregistration, which run back to back in one pipeline:
``handoff_settle`` then takes items beyond the live waiters, up to the room the process has left,
so none stays unseen. An item handed while the only waiters counted were a dead process's waits
for the next listener, or for the sweeper, like any queued session without a lease. Warm shutdown
wakes the listener through the process's ``stop`` list, which it waits on too.

The cost is per process, not per session: one round trip per wait of up to ``wait_seconds``, and
one per handed item.
"""

from __future__ import annotations

from typing import NamedTuple

import redis.asyncio as aioredis

from chatq.tasks.keys import Keys
from chatq.tasks.scripts import load

SLOTS = 16
"""Waiters one process registers at most: a burst of producers can hand it that many sessions
before its listener comes back for more (one round trip per handed item)."""


class Handed(NamedTuple):
    namespace: str
    session_id: str
    job_id: str | None


def parse(item: str) -> Handed:
    namespace, session_id, job_id = (item.split(" ") + ["", ""])[:3]
    return Handed(namespace, session_id, job_id or None)


class Handoff:
    def __init__(self, r: aioredis.Redis, keys: Keys, identity: str, queue: str, wait_seconds: float):
        self.r = r
        self.keys = keys
        self.identity = identity
        self.queue = queue
        self.wait_seconds = wait_seconds
        self._wait = load(r, "handoff_wait")
        self._settle = load(r, "handoff_settle")
        self._stop = load(r, "handoff_stop")
        self._waiters: list[str] = []
        self.stopped = False

    async def next_sessions(self, room: int) -> list[Handed]:
        """Wait up to ``wait_seconds`` for sessions handed to this process, which has ``room`` free
        slots (usually one comes back, at most ``room``; none on timeout or warm shutdown). One round
        trip: register, wait, deregister."""
        if self.stopped or room <= 0:
            return []
        idle, handed, stop = self.keys.idle(self.queue), self.keys.handed(self.queue), self.keys.stop(self.identity)
        self._waiters = [f"{self.identity}#{i}" for i in range(min(room, SLOTS))]
        try:
            pipe = self.r.pipeline(transaction=False)
            await self._wait(keys=[idle], args=[int(self.wait_seconds * 1000), *self._waiters], client=pipe)
            pipe.blpop([handed, stop], timeout=self.wait_seconds)
            await self._settle(keys=[idle, handed], args=[room - 1, *self._waiters], client=pipe)
            _, popped, extra = await pipe.execute()
        finally:
            self._waiters = []
        items = [popped[1]] if popped and popped[0] == handed else []
        items += extra or []
        return [parse(item) for item in items]

    async def stop(self) -> None:
        """Warm shutdown: deregister this process's waiters and wake its listener; nothing new reaches it."""
        self.stopped = True
        await self._stop(keys=[self.keys.idle(self.queue), self.keys.stop(self.identity)], args=self._waiters)

