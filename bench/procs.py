"""The processes a benchmark run starts (test server, worker nodes), and their guaranteed clean-up.

Every child gets its own process group, so stopping it also stops its children (Celery's prefork
pool); ``Processes`` is a context manager and also stops everything on SIGTERM/SIGINT, so a failed
or interrupted run never leaves workers consuming from the benchmark's queues.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from . import proc_stats

ROOT = Path(__file__).resolve().parent.parent


def ensure_redis() -> None:
    """Start Redis with the repo's own script unless it already answers."""
    subprocess.run(["bash", str(ROOT / ".ci" / "ensure-redis")], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Owns the child processes of one run: ``with Processes(logdir) as procs: procs.start(...)``."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.children: list[subprocess.Popen] = []
        self._old_handlers: dict[int, object] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "w")
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        proc.name = name  # type: ignore[attr-defined]
        self.children.append(proc)
        return proc

    def log_tail(self, proc: subprocess.Popen, chars: int = 3000) -> str:
        return (self.logdir / f"{proc.name}.log").read_text()[-chars:]  # type: ignore[attr-defined]

    def stop(self, proc: subprocess.Popen, grace: float = 10) -> None:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(5)
        _signal_group(proc, signal.SIGKILL)  # stragglers of a group whose leader already exited

    def stop_all(self) -> None:
        for proc in reversed(self.children):
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        for proc in reversed(self.children):
            self.stop(proc, grace=10)
        self.children.clear()

    def __enter__(self) -> Processes:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old_handlers[sig] = signal.signal(sig, _raise_exit)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop_all()
        finally:
            for sig, handler in self._old_handlers.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start_testserver(procs: Processes, latency: float) -> tuple[str, str]:
    """The project's OpenAI-compatible server in its own process; returns (base_url, control_url)."""
    port = free_port()
    proc = procs.start("testserver", [sys.executable, "-m", "chatq.testing.server", "--port", str(port),
                                      "--latency", str(latency)],
                       dict(os.environ, PYTHONUNBUFFERED="1"))
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{root}/healthz", timeout=1).status_code == 200:
                return f"{root}/v1", root
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"test server did not start:\n{procs.log_tail(proc)}")
        time.sleep(0.05)


class TestServerControl:
    """``/control``, ``/stats`` and ``/streams`` of the test server: set the latency (and the delay
    between a streamed reply's chunks), reset and read max in-flight, read the streams' emission logs."""

    __test__ = False

    def __init__(self, root: str):
        self.http = httpx.Client(base_url=root, timeout=10)

    def set(self, latency: float, chunk_delay: float = 0.0) -> None:
        self.http.post("/control", json={"latency": latency, "chunk_delay": chunk_delay, "reset": True}
                       ).raise_for_status()

    def stats(self) -> dict[str, int]:
        return self.http.get("/stats").json()

    def streams(self, contains: str) -> list[dict]:
        """The streamed replies to messages containing ``contains`` (the server keeps the last 1,000),
        each with its emission log: ``[content characters sent so far, time.time()]`` per chunk."""
        return self.http.get("/streams", params={"contains": contains}, timeout=60).json()


class Monitor:
    """Samples a phase on a thread: peak RSS, threads and processes of the worker node's process
    trees and the test server's calls in flight; CPU per process group from start to end (see
    ``CpuMeter``). Its own thread's CPU (``own_cpu``) is part of the client's, which subtracts it.
    """

    def __init__(self, node: list[int], cpu_groups: dict[str, list[int]], server: TestServerControl | None,
                 interval: float = 0.2, tree_every: int = 10):
        self.node = node
        self.tree_every = tree_every  # finding the node's children scans all of /proc: every 10th sample
        self._pids: list[int] = []
        self._samples = 0
        self.server = server
        self.interval = interval
        self.peak_rss = self.peak_threads = self.peak_procs = 0
        self.own_cpu = 0.0
        self.max_in_flight = 0  # the server's own count (reset by ``TestServerControl.set``), read at the end
        self.in_flight: list[int] = []
        self.cpu = CpuMeter(cpu_groups)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-monitor", daemon=True)

    def sample(self) -> None:
        if self._samples % self.tree_every == 0:
            self._pids = [p for pid in self.node for p in proc_stats.tree(pid)]
        self._samples += 1
        pids = self._pids
        self.peak_rss = max(self.peak_rss, sum(proc_stats.rss(p) for p in pids))
        self.peak_threads = max(self.peak_threads, sum(proc_stats.threads(p) for p in pids))
        self.peak_procs = max(self.peak_procs, len(pids))
        if self.server:
            self.in_flight.append(self.server.stats()["in_flight"])

    def _run(self) -> None:
        start = time.thread_time()
        while not self._stop.wait(self.interval):
            self.sample()
        self.own_cpu = time.thread_time() - start

    def __enter__(self) -> Monitor:
        self.cpu.__enter__()
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu.__exit__()
        if self.server:
            self.max_in_flight = self.server.stats()["max_in_flight"]


def cpu_seconds(pid: int) -> float:
    """CPU of a process tree; for this very process, its own only (its children are measured apart)."""
    return sum(proc_stats.cpu(p) for p in proc_stats.tree(pid, children=pid != os.getpid()))


class CpuMeter:
    """CPU seconds each named group of processes spent during a phase: where a job's cost goes."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups
        self.spent: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.groups.items()}

    def __enter__(self) -> CpuMeter:
        self._start = self._now()
        self._busy, self._irq = proc_stats.machine_busy()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.spent = {name: end[name] - self._start[name] for name in end}
        busy, irq = proc_stats.machine_busy()
        self.spent["irq"] = irq - self._irq
        # Anything else that ran meanwhile (py-spy, another test run on this machine...).
        self.spent["other"] = max(0.0, busy - self._busy - sum(self.spent.values()))
