"""Resident memory and CPU time of process trees: psutil when installed, else Linux's /proc.

psutil only arrives with the test extra (through pytest-celery), and the benchmark must not need it.
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_GONE = (OSError, ValueError, IndexError, *((psutil.Error,) if psutil else ()))


def _stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # the fields after "pid (comm) ", from state on


def tree(pid: int, children: bool = True) -> list[int]:
    """The pid and, unless told otherwise, all its descendants that are alive now."""
    if not children:
        return [pid]
    if psutil:
        try:
            return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
        except _GONE:
            return []
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents.setdefault(int(_stat(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def rss(pid: int) -> int:
    """Resident bytes of one process, 0 if it is gone."""
    try:
        if psutil:
            return psutil.Process(pid).memory_info().rss
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except _GONE:
        return 0


def threads(pid: int) -> int:
    """Threads of one process, 0 if it is gone."""
    try:
        if psutil:
            return psutil.Process(pid).num_threads()
        return int(_stat(pid)[17])  # num_threads
    except _GONE:
        return 0


def cpu(pid: int) -> float:
    """User + system CPU seconds of one process, 0 if it is gone."""
    try:
        if psutil:
            t = psutil.Process(pid).cpu_times()
            return t.user + t.system
        fields = _stat(pid)
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    except _GONE:
        return 0.0


def machine_busy() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy since boot, and the part of it in interrupts
    (softirq: loopback TCP's receive side runs there and is charged to no process)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = f + [0] * (8 - len(f))
    return (user + nice + system + irq + softirq + steal) / _TICKS, (irq + softirq) / _TICKS
