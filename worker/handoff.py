"""Idle runner threads wait here for a session handed to them directly, instead of a Celery message.

A thread that has drained a session registers itself in ``{ns}:idle:{queue}`` (scored by its
deadline, on Redis's clock) and blocks on its own inbox. A producer whose job is alone in an
unheld queue pops the newest live waiter and pushes the session into its inbox in the same
script that queues the job (``session_queue._SUBMIT``): no Celery publish, delivery or ack for
that job. With no live waiter the producer publishes a wake-up as before.

Leaving is one script (deregister, then take whatever was pushed meanwhile), so a handed session
is never dropped by a waiter that timed out. One handed to a waiter that dies before running it
is found by the sweeper, like any queued session without a lease.
"""

from __future__ import annotations

import threading

import redis

from chatq.tasks.keys import Keys

STOP = "-"  # pushed into waiting inboxes on warm shutdown; never a valid "namespace session" entry

_REGISTER = """
-- KEYS: idle ; ARGV: waiter, wait_ms
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2]), ARGV[1])
"""

_LEAVE = """
-- KEYS: idle, inbox ; ARGV: waiter
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('LPOP', KEYS[2])
"""


class Handoff:
    def __init__(self, r: redis.Redis, keys: Keys, identity: str, wait_seconds: float):
        self.r = r
        self.keys = keys
        self.identity = identity
        self.wait_seconds = wait_seconds
        self._register = r.register_script(_REGISTER)
        self._leave = r.register_script(_LEAVE)
        self._waiting: dict[str, str] = {}
        self._lock = threading.Lock()

    def next_session(self, queue: str) -> tuple[str, str] | None:
        """Wait up to ``wait_seconds`` for a session handed to this thread: (namespace, session_id)."""
        waiter = f"{self.identity}:{threading.get_ident()}"
        idle, inbox = self.keys.idle(queue), self.keys.inbox(waiter)
        with self._lock:
            self._waiting[waiter] = queue
        try:
            pipe = self.r.pipeline(transaction=False)
            self._register(keys=[idle], args=[waiter, int(self.wait_seconds * 1000)], client=pipe)
            pipe.blpop([inbox], timeout=self.wait_seconds)
            got = pipe.execute()[1]
            item = got[1] if got else self._leave(keys=[idle, inbox], args=[waiter])
        finally:
            with self._lock:
                self._waiting.pop(waiter, None)
        if not item or item == STOP:
            return None
        namespace, _, session_id = item.partition(" ")
        return namespace, session_id

    def release_all(self) -> None:
        """Warm shutdown: deregister this process's waiters and wake them; nothing new reaches them."""
        with self._lock:
            waiting = list(self._waiting.items())
        if not waiting:
            return
        pipe = self.r.pipeline(transaction=False)
        for waiter, queue in waiting:
            pipe.zrem(self.keys.idle(queue), waiter)
            pipe.rpush(self.keys.inbox(waiter), STOP)
            pipe.pexpire(self.keys.inbox(waiter), 60000)
        pipe.execute()
