"""Is any worker alive? Answered cheaply, without a broadcast on every probe.

Every worker runs a sweeper that takes the fleet-wide sweep lock once per sweep interval for 0.9
of it, so while that key exists some worker process was alive within the last interval: one GET.
Only when it is absent (the 10% gap, or no worker) does the probe ask Celery with a broadcast
ping, and it keeps that answer for a few seconds, one ping at a time, so a storm of probes sends
one broadcast, not one each.
"""

from __future__ import annotations

import threading
import time

from chatq.tasks.client import ChatClient
from chatq.tasks.keys import Keys


class WorkerProbe:
    def __init__(self, client: ChatClient, ttl: float = 5.0, timeout: float = 1.0):
        self.client = client
        self.ttl = ttl
        self.timeout = timeout
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._answer = False

    def alive(self) -> bool:
        if self.client.r.exists(Keys(self.client.settings.namespace).sweep_lock):
            return True
        with self._lock:
            if time.monotonic() - self._checked_at > self.ttl:
                self._answer = bool(self.client.app.control.ping(timeout=self.timeout))
                self._checked_at = time.monotonic()
            return self._answer
