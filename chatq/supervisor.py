"""``chatq worker --processes N``: N worker processes on one node, started and stopped as one.

Each process is a whole ``chatq worker`` (its own Celery consumer, event loop and hand-off
listener), so they share nothing but Redis; no pool process forks or pipes tasks between them.
Signals are passed on (SIGTERM: warm shutdown, SIGINT/SIGQUIT as Celery has them), so a warm
shutdown finishes every process's running turns. A process that dies while the node runs is
started again after a pause (as Celery's own pool replaces a lost child); one that refuses to start
(exit 2: bad settings, a tool that does not import) stops the node, since the others would too.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)
RESTART_PAUSE = 1.0
REFUSED = 2
"""A worker's exit code for settings it cannot start with (``chatq.worker.celery``)."""


def supervise(argv: Callable[[int], list[str]], processes: int, sleep: Callable[[float], None] = time.sleep) -> int:
    """Run ``argv(i)`` for i in range(processes) until a signal stops them; returns the node's exit
    code (0 after a clean shutdown, else the first failure's)."""
    children = {i: subprocess.Popen(argv(i)) for i in range(processes)}
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    code = 0
    try:
        while children:
            for i, child in list(children.items()):
                status = child.poll()
                if status is None:
                    continue
                if stopping or status == REFUSED:
                    # One still starting when the signal came dies of it, before Celery handles it: clean.
                    code = code or (0 if stopping and status == -stopping[0] else status)
                    del children[i]
                    if status == REFUSED and not stopping:
                        forward(signal.SIGTERM, None)
                    continue
                print(f"chatq worker: process {child.pid} exited {status}; starting another",
                      file=sys.stderr, flush=True)
                sleep(RESTART_PAUSE)
                children[i] = subprocess.Popen(argv(i))
            sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
