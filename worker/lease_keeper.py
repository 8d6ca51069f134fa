"""One heartbeat thread per process renews every session lease it holds, in one round trip (a
script call per lease, each in its own session's slot, pipelined).

Leases expire on their own when a worker dies, which is how a dead worker's session is found.
"""

from __future__ import annotations

import logging
import threading
import time

from chatq.tasks.redis_pool import UNREACHABLE
from chatq.tasks.session_machine import SessionMachine

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, machine: SessionMachine, lease_ms: int):
        self.machine = machine
        self.lease_ms = lease_ms
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the heartbeat thread (once; ``hold`` starts it too if nobody did)."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="chatq-leases", daemon=True)
            self._thread.start()

    def hold(self, key: str, token: str) -> None:
        with self._lock:
            self._held[key] = token
            self._start()

    def drop(self, key: str, token: str) -> None:
        """Stop renewing ``key`` if ``token`` holds it: a drain that found the session held by
        another thread (a duplicate wake-up) must not stop that thread's renewals."""
        with self._lock:
            if self._held.get(key) == token:
                del self._held[key]

    def renew_now(self) -> None:
        with self._lock:
            held = list(self._held.items())
        for key in self.machine.renew(held, self.lease_ms):
            # The commit is fenced by the token, so a lost lease needs no flag: it just cannot commit.
            log.warning("lease %s was lost; its job will be taken up elsewhere", key)

    def _run(self) -> None:
        while True:
            time.sleep(self.lease_ms / 3000)
            try:
                self.renew_now()
            except UNREACHABLE as exc:  # leases that run out meanwhile are simply lost (fenced commit)
                log.warning("lease renewal failed, Redis unreachable (%s); retrying", exc)
            except Exception:
                log.exception("lease renewal failed; retrying")
