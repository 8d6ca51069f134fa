"""Idle runner threads wait here to be handed a session directly, instead of a Celery message.

A thread that has drained a session registers in ``idle:{queue}`` (scored by its deadline, on
Redis's clock) and blocks on the queue's ``handed`` list. A producer whose job is alone in an unheld
FIFO pushes ``<namespace> <session_id> <job_id>`` there (``handoff_give``, right after the submit)
if more threads wait than items are already there, and Redis gives it to the thread that has waited
longest: no Celery publish, delivery or ack for that job. With nobody waiting the producer publishes
a wake-up as before.

Every script names its keys up front (a cluster needs that), so a producer cannot pick one
thread's own inbox; hence one list per queue. The count it trusts can run ahead of the threads
really blocked only for a thread between its BLPOP and its deregistration, which run back to back
in one pipeline: ``handoff_settle`` then takes any item beyond the live waiters, so none stays
unseen. An item handed while the only thread counted was a dead one waits for the next thread to
wait, or for the sweeper, like any queued session without a lease. Warm shutdown wakes the
process's own threads through its ``stop`` list, which they wait on too.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import redis

from chatq.tasks.keys import Keys
from chatq.tasks.scripts import load


class Handed(NamedTuple):
    namespace: str
    session_id: str
    job_id: str | None


def parse(item: str) -> Handed:
    namespace, session_id, job_id = (item.split(" ") + ["", ""])[:3]
    return Handed(namespace, session_id, job_id or None)


class Handoff:
    def __init__(self, r: redis.Redis, keys: Keys, identity: str, wait_seconds: float):
        self.r = r
        self.keys = keys
        self.identity = identity
        self.wait_seconds = wait_seconds
        self._wait = load(r, "handoff_wait")
        self._settle = load(r, "handoff_settle")
        self._stop = load(r, "handoff_stop")
        self._waiting: dict[str, str] = {}
        self._lock = threading.Lock()

    def next_sessions(self, queue: str) -> list[Handed]:
        """Wait up to ``wait_seconds`` for sessions handed to this thread (usually one, rarely two;
        none on timeout or warm shutdown). One round trip: register, wait, deregister."""
        waiter = f"{self.identity}:{threading.get_ident()}"
        idle, handed, stop = self.keys.idle(queue), self.keys.handed(queue), self.keys.stop(self.identity)
        with self._lock:
            self._waiting[waiter] = queue
        try:
            pipe = self.r.pipeline(transaction=False)
            self._wait(keys=[idle], args=[waiter, int(self.wait_seconds * 1000)], client=pipe)
            pipe.blpop([handed, stop], timeout=self.wait_seconds)
            self._settle(keys=[idle, handed], args=[waiter], client=pipe)
            _, popped, extra = pipe.execute()
        finally:
            with self._lock:
                self._waiting.pop(waiter, None)
        items = [popped[1]] if popped and popped[0] == handed else []
        if extra:
            items.append(extra)
        return [parse(item) for item in items]

    def release_all(self) -> None:
        """Warm shutdown: deregister this process's waiting threads and wake them; nothing new reaches them."""
        with self._lock:
            waiting = list(self._waiting.items())
        by_queue: dict[str, list[str]] = {}
        for waiter, queue in waiting:
            by_queue.setdefault(queue, []).append(waiter)
        if not by_queue:
            return
        pipe = self.r.pipeline(transaction=False)
        for queue, waiters in by_queue.items():
            self._stop(keys=[self.keys.idle(queue), self.keys.stop(self.identity)], args=waiters, client=pipe)
        pipe.execute()
