"""Cuts a provider reply that stalls past its call's deadline.

httpx's timeouts are per read: a reply that stops just before the deadline would hold its thread
for one more whole read timeout. The watchdog shuts down (never closes: the reading thread still
owns the file descriptor) the socket of a call still reading at its deadline, which wakes that
thread's blocked read at once. One thread per process looks every ``tick``; a call costs two
dict operations under an uncontended lock. An asyncio runtime gets the same from ``asyncio.timeout``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, tick: float, clock: Callable[[], float] = time.monotonic):
        self.tick = tick
        self.clock = clock
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, socket.socket]] = {}
        self._pid: int | None = None  # the process whose thread runs: a forked child starts its own

    @contextmanager
    def watch(self, sock: socket.socket | None, deadline: float) -> Iterator[None]:
        """Within the block, ``sock`` is shut down if the block is still running at ``deadline``."""
        if sock is None:
            yield
            return
        key = threading.get_ident()
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="provider-watchdog", daemon=True).start()
            self._watched[key] = (deadline, sock)
        try:
            yield
        finally:
            # Under the lock, so the watchdog never shuts a socket down after its call ended
            # (the connection goes back to the pool for the thread's next call).
            with self._lock:
                self._watched.pop(key, None)

    def check(self) -> int:
        """Shut down every watched socket past its deadline; how many."""
        now = self.clock()
        cut = 0
        with self._lock:
            for key, (deadline, sock) in list(self._watched.items()):
                if now >= deadline:
                    del self._watched[key]
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:  # already closed by its peer: nothing left to wake
                        pass
                    cut += 1
        return cut

    def _run(self) -> None:
        while True:
            time.sleep(self.tick)
            try:
                if cut := self.check():
                    log.info("cut %d provider repl%s stalled past the deadline", cut, "y" if cut == 1 else "ies")
            except Exception:  # the watchdog must outlive any one bad socket
                log.exception("provider watchdog check failed")
