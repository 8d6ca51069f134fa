"""Finds sessions whose work nobody holds (a dead worker's, or a lost wake-up) and wakes them.

Runs in every worker; a short Redis lock makes one sweep per interval fleet-wide. It bounds how
long a session can stall to about lease + 2 × interval (chatq's Redis broker keeps no unacked copies:
the sweeper is what recovers a wake-up that died with its worker).
A sweep cannot tell a lost wake-up from one waiting in the broker behind a backlog, so a session
it finds stalled again, untouched since its wake-up, is woken again only after a back-off
doubling from 4 intervals up to ``BACKOFF_CAP`` (``SessionMachine.sweep``): a backlog costs a few
duplicate wake-ups per session, not one every 2 intervals for as long as it lasts.
Each sweep also drops, a chunk at a time, listing entries of sessions that expired, so the
listing does not keep them forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from kombu.exceptions import OperationalError

from chatq.tasks.keys import Keys
from chatq.tasks.redis_pool import UNREACHABLE
from chatq.tasks.session_machine import RECENT_MAX, SessionMachine
from chatq.tasks.session_store import SessionStore

log = logging.getLogger(__name__)

PRUNE_CHUNK = 500
"""Listing entries checked per namespace and sweep: a million sessions take 2,000 sweeps."""

BACKOFF_CAP = 64
"""The longest wait, in intervals, before re-waking a session found stalled in the same state
(5 min 20 s at the default 5 s): what a wake-up lost twice in a row can cost, and what a session
stuck in a backlog costs, one duplicate wake-up per this. A multiple of the interval, so a fleet
that sweeps more often for faster recovery also recovers a twice-lost wake-up faster."""


class Sweeper:
    def __init__(self, r: redis.Redis, keys: Keys,
                 spaces: Callable[[], list[tuple[SessionMachine, SessionStore]]],
                 wake: Callable[[str, str], None], interval: float, clock: Callable[[], int] | None = None):
        """``clock``: now in ms on Redis's clock, for tests; by default each sweep asks Redis."""
        self.r = r
        self.keys = keys
        self.spaces = spaces
        self.wake = wake
        self.interval = interval
        self.clock = clock
        self._pruned_to: dict[str, int] = {}
        self._thread: threading.Thread | None = None

    def sweep_once(self) -> list[str]:
        if not self.r.set(self.keys.sweep_lock, "1", nx=True, px=int(self.interval * 900)):
            return []
        woken = []
        for machine, sessions in self.spaces():
            ns = machine.keys.ns
            now_ms = self.clock() if self.clock else None
            for sid in machine.sweep(2 * self.interval, BACKOFF_CAP * self.interval, now_ms=now_ms):
                log.info("waking stalled session %s in %s", sid, ns)
                self.wake(sid, ns)
                woken.append(sid)
            self._pruned_to[ns] = sessions.prune(self._pruned_to.get(ns, 0), PRUNE_CHUNK)
            self.r.zremrangebyrank(machine.keys.recent, 0, -RECENT_MAX - 1)  # only the newest are listed
        return woken

    def _run(self) -> None:
        """Until the process exits: a worker's sweeper is never stopped, even during a warm shutdown."""
        while True:
            time.sleep(self.interval)
            try:
                self.sweep_once()
            except (*UNREACHABLE, OperationalError) as exc:  # Redis or the broker is down: next interval
                log.warning("sweep failed, Redis or the broker unreachable (%s); retrying", exc)
            except Exception:
                log.exception("sweep failed; retrying next interval")

    def start(self) -> Sweeper:
        self._thread = threading.Thread(target=self._run, name="chatq-sweeper", daemon=True)
        self._thread.start()
        return self
