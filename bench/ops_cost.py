"""Issue 14's figure: what watching a fleet costs its workers (the console and the worker metrics).

Paired runs on ``run.py``'s machinery (its ``Bench``: the test server, the chatq node, the client, CPU
per process group). The same workload (S sessions x M messages submitted up front, 0 s provider
latency, so chatq's own work is all there is to measure) goes through the node twice per pair:

- **watched**: every worker process serves Prometheus metrics (``CHATQ_METRICS_PORT``, a port each),
  scraped every ``--scrape-every`` s as Prometheus would (and the API's ``/metrics`` with them), while
  the console's fleet panel (``/ui/fleet/panel``: the cards, both plots of the last hour, the
  processes) is fetched every ``--poll-every`` s, as an open browser tab on the fleet page does;
- **unwatched**: no metrics port, nobody polling.

``chatq serve`` runs through both (idle in the unwatched runs) and is measured as its own group. The
node restarts between the two settings (the port is read at start-up) and warms up; the order
alternates (watched first, then unwatched first, ...) because this VM's speed drifts. The watchers
are one thread of this process, started and stopped inside each measured window; their CPU is
shown apart (``watchers``), not in the client's.

Workers count their metrics whether or not they serve them (an increment or an observation in the
process's memory), so the pairs price serving, scraping and the console's reads; the counting itself
is priced apart, in this process: one job's metric updates, timed alone. A pair's ratio carries the
machine's noise (a few percent from run to run on a shared VM), so the cost of a scrape is also
measured directly, on the node at rest after the pairs: one worker process's CPU over ``--scrapes``
back-to-back scrapes, less its CPU over as long a time unscraped; with the runs' jobs/s that gives
the share of the workers' CPU that scraping takes at this load. (The console's reads touch Redis and
the API only, never a worker.)

Prints CPU ms per job by process group, each pair's workers' ratio (watched / unwatched) and the
issue's target: under 5% more workers' CPU per job when watched.

    .venv/bin/python bench/ops_cost.py --repeat 3      # the figures in RESULTS.md: 600 x 5, 3 pairs
    .venv/bin/python bench/ops_cost.py --quick         # a tiny run, for the test suite
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench import proc_stats, report, run  # noqa: E402
from bench.procs import Monitor, Processes, cpu_seconds, ensure_redis, free_port  # noqa: E402
from bench.stats import Run  # noqa: E402

TARGET = 1.05  # watched: at most 5% more workers' CPU per job
PANEL = "/ui/fleet/panel"
QUICK: dict[str, object] = dict(sessions=8, messages=3, workers=1, concurrency=16, repeat=1, poll_every=0.2,
                                scrape_every=0.2, scrapes=20)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--quick", action="store_true")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=600, help="sessions of the workload")
    p.add_argument("--messages", type=int, default=5, help="messages per session")
    p.add_argument("--latency", type=float, default=0.0, help="provider latency in seconds")
    p.add_argument("--repeat", type=int, default=3, help="pairs (watched and unwatched, back to back)")
    p.add_argument("--poll-every", type=float, default=2.0, help="seconds between fetches of the console's fleet panel")
    p.add_argument("--scrape-every", type=float, default=5.0, help="seconds between scrapes of every /metrics")
    p.add_argument("--scrapes", type=int, default=200, help="back-to-back scrapes of one idle worker, timed")
    p.add_argument("--workers", type=int, default=3, help="chatq worker processes (one node)")
    p.add_argument("--concurrency", type=int, default=200,
                   help="sessions per chatq worker process (CHATQ_CONCURRENCY); 0: `chatq worker`'s own default")
    p.add_argument("--waiters", choices=["threads", "listen"], default="threads",
                   help="how the client waits for the jobs (see run.py)")
    p.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server (no DB number)")
    p.add_argument("--dbs", default="12,13,10,11", help="Redis DBs, as run.py's (the last two are unused)")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("--quick", action="store_true", help="a tiny workload: checks the benchmark runs")
    if pre.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK)
    return p.parse_args(argv)


def bench_args(a: argparse.Namespace) -> argparse.Namespace:
    """``run.py``'s options for the ``Bench`` underneath: the same node, no baseline, no limit."""
    return run.parse_args(["--sessions", str(a.sessions), "--messages", str(a.messages), "--workers", str(a.workers),
                           "--concurrency", str(a.concurrency), "--waiters", a.waiters, "--redis", a.redis,
                           "--dbs", a.dbs, "--backlog", "", "--open-rate", "0", "--skip", "baseline,limit"])


@dataclass
class Watched:
    """What the watchers did during one measured run."""

    panels: int = 0
    scrapes: int = 0
    errors: int = 0
    cpu: float = 0.0  # CPU seconds of the watchers' thread
    last_error: str = ""


class Watchers:
    """A browser tab on the console's fleet page and a Prometheus server, in one thread: the panel
    fetched every ``poll`` s, every ``/metrics`` every ``scrape`` s, each first at once."""

    def __init__(self, panel: str, metrics: list[str], poll: float, scrape: float):
        self.panel, self.metrics, self.poll, self.scrape = panel, metrics, poll, scrape
        self.seen = Watched()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watchers", daemon=True)

    def _get(self, http: httpx.Client, url: str) -> bool:
        try:
            r = http.get(url)
            r.raise_for_status()
            return True
        except httpx.HTTPError as exc:  # counted, never stops the run
            self.seen.errors += 1
            self.seen.last_error = f"{url}: {exc!r}"
            return False

    def _run(self) -> None:
        start = time.thread_time()
        with httpx.Client(timeout=10, trust_env=False) as http:
            next_poll = next_scrape = time.monotonic()
            while not self._stop.is_set():
                if time.monotonic() >= next_poll:
                    self.seen.panels += self._get(http, self.panel)
                    next_poll += self.poll
                if time.monotonic() >= next_scrape:
                    self.seen.scrapes += sum(self._get(http, url) for url in self.metrics)
                    next_scrape += self.scrape
                self._stop.wait(max(0.0, min(next_poll, next_scrape) - time.monotonic()))
        self.seen.cpu = time.thread_time() - start

    def __enter__(self) -> Watchers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class WatchedMonitor:
    """``Monitor`` of a measured run with the watchers running inside its window."""

    def __init__(self, monitor: Monitor, watchers: Watchers | None):
        self.monitor, self.watchers = monitor, watchers

    def __enter__(self) -> Monitor:
        self.monitor.__enter__()
        if self.watchers:
            self.watchers.__enter__()
        return self.monitor

    def __exit__(self, *exc: object) -> None:
        if self.watchers:
            self.watchers.__exit__(*exc)
        self.monitor.__exit__(*exc)


class OpsBench(run.Bench):
    """``run.Bench`` with the node restartable with its metrics served or not, and ``chatq serve``."""

    def __init__(self, opts: argparse.Namespace, procs: Processes):
        super().__init__(bench_args(opts), procs)
        self.opts = opts
        self.watched: bool | None = None
        self.ports: list[int] = []
        self.metrics: list[str] = []  # every worker process's /metrics, and the API's
        self.seen: list[Watched] = []  # per run, in ``runs``' order
        self._watchers: Watchers | None = None

    def start_node(self, env: dict[str, str] | None = None, worker_env=None) -> None:
        """The node serving metrics unless ``watched`` is False (``Bench.start`` starts it watched)."""
        on = self.watched is not False
        self.ports = [free_port() for _ in range(self.args.workers)] if on else []
        super().start_node(env, (lambda i: {"CHATQ_METRICS_PORT": str(self.ports[i])}) if on else None)
        self.watched = on

    def await_node(self) -> None:
        super().await_node()
        self.metrics = []
        if self.watched:
            for port, proc in zip(self.ports, self.workers):  # `chatq worker -p N` serves process i on N + i
                processes = max(1, len(proc_stats.tree(proc.pid)) - 1)
                self.metrics += [f"http://127.0.0.1:{port + i}/metrics" for i in range(processes)]
            if self.api:
                self.metrics.append(f"{self.api}/metrics")
            for url in self.metrics:  # served from start-up: a dead port fails the run here, not silently
                httpx.get(url, timeout=10).raise_for_status()

    def set_watched(self, on: bool) -> None:
        """Restart the node with its metrics served or not (unless it already is), and warm it up."""
        if self.watched is on:
            return
        self.stop_node()
        self.watched = on
        self.start_node()
        self.await_node()
        self.warm_up()

    def _monitor(self, node: list[int], groups: dict[str, list[int]]) -> WatchedMonitor:  # type: ignore[override]
        mon = super()._monitor(node, {**groups, "api": [self.api_proc.pid]})
        return WatchedMonitor(mon, self._watchers)

    def measure(self, suffix: str) -> None:
        o = self.opts
        name = "watched" if self.watched else "unwatched"
        self._watchers = (Watchers(f"{self.api}{PANEL}", self.metrics, o.poll_every, o.scrape_every)
                          if self.watched else None)
        r = self._chatq_run(o.latency, suffix, name=name)
        seen = self._watchers.seen if self._watchers else Watched()
        self._watchers = None
        done = max(1, r.total - r.unfinished)
        r.cpu_ms["watchers"] = 1000 * seen.cpu / done  # this process's thread, not the client's work
        r.cpu_ms["wait"] = r.cpu_ms.get("wait", 0.0) - r.cpu_ms["watchers"]
        self.seen.append(seen)
        if seen.errors:
            print(f"    watchers: {seen.errors} failed request(s), e.g. {seen.last_error}", flush=True)

    def pairs(self) -> None:
        for i in range(self.opts.repeat):
            first = bool(self.watched)  # alternate: no restart between pairs
            for on in (first, not first):
                self.set_watched(on)
                self.measure(f"-p{i}")

    def scrape_cost(self) -> float:
        """CPU ms one scrape of ``/metrics`` costs a worker process (the first worker's first), measured
        at rest: the worker's CPU over ``--scrapes`` back-to-back scrapes less its CPU over as long unscraped."""
        self.set_watched(True)
        pid, url = self.workers[0].pid, self.metrics[0]
        with httpx.Client(timeout=10, trust_env=False) as http:
            http.get(url).raise_for_status()
            cpu, start = cpu_seconds(pid), time.monotonic()
            for _ in range(self.opts.scrapes):
                http.get(url).raise_for_status()
            scraped, took = cpu_seconds(pid) - cpu, time.monotonic() - start
        cpu = cpu_seconds(pid)
        time.sleep(took)
        idle = cpu_seconds(pid) - cpu
        return 1000 * max(0.0, scraped - idle) / self.opts.scrapes


def metric_updates_us(n: int = 20_000) -> float:
    """Microseconds of one job's metric updates on a worker (as ``worker/runner.py`` and
    ``worker/provider.py`` make them for a job of one provider call), timed alone in this process."""
    from chatq.worker.metrics import WorkerMetrics

    m = WorkerMetrics()
    start = time.perf_counter()
    for _ in range(n):
        m.queue_wait.labels("default").observe(0.001)
        m.calls_in_flight.inc()
        m.first_token.labels("model").observe(0.01)
        m.calls_in_flight.dec()
        m.provider_call.labels("model", "ok").observe(0.02)
        m.jobs.labels("default", "succeeded", "").inc()
        m.run_time.labels("default", "succeeded").observe(0.03)
        m.tokens.labels("default", "model", "prompt").inc(10)
        m.tokens.labels("default", "model", "completion").inc(5)
    return (time.perf_counter() - start) / n * 1e6


# -- the tables ---------------------------------------------------------------------------------

GROUPS = ["workers", "api", "server", "redis", "irq", "other", "watchers"]


def _client(r: Run) -> float:
    return r.cpu_ms.get("submit", 0.0) + r.cpu_ms.get("wait", 0.0)


def cost_table(runs: list[Run], seen: list[Watched]) -> str:
    rows = []
    for i, (r, w) in enumerate(zip(runs, seen)):
        rows.append([str(i // 2 + 1), r.name, f"{r.jobs}/{r.total}", report._f(r.rate), report._f(_client(r), 2),
                     *(report._f(r.cpu_ms.get(g, math.nan), 2) for g in GROUPS),
                     report._f(sum(r.cpu_ms.values()), 2), str(w.panels), str(w.scrapes), str(w.errors),
                     str(r.check.lost + r.check.reordered)])
    return report._table(["pair", "setting", "jobs_ok", "jobs/s", "client", *GROUPS, "total", "panels", "scrapes",
                          "errors", "lost+reordered"], rows)


def ratios(runs: list[Run]) -> list[tuple[float, float, float]]:
    """Each back-to-back pair's workers' CPU ms per job, (watched, unwatched, watched/unwatched)."""
    out = []
    for a, b in zip(runs[0::2], runs[1::2]):
        on, off = (a, b) if a.name == "watched" else (b, a)
        x, y = on.cpu_ms.get("workers", 0.0), off.cpu_ms.get("workers", 0.0)
        out.append((x, y, x / y if y else math.nan))
    return out


def targets(pairs: list[tuple[float, float, float]], runs: list[Run], seen: list[Watched]) -> list[tuple[str, bool, str]]:
    out = []
    if pairs:
        x = statistics.median(p[2] for p in pairs)
        each = ", ".join(f"{p[2]:.3f}x" for p in pairs)
        out.append((f"watched: workers' CPU per job <= {TARGET:.2f}x unwatched", x <= TARGET,
                    f"{x:.3f}x, the median of {len(pairs)} pair(s)' ratios ({each}); the runs' own medians "
                    f"{statistics.median(p[0] for p in pairs):.3f} ms watched, "
                    f"{statistics.median(p[1] for p in pairs):.3f} ms unwatched"))
    bad = sum(r.check.lost + r.check.reordered + r.failed for r in runs) + sum(w.errors for w in seen)
    out.append(("zero turns lost or reordered, no failed job, every watcher's request answered", bad == 0, str(bad)))
    return out


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    ensure_redis()
    print(f"chatq ops cost benchmark: {run.machine()}; node = {run.node_shape(o.workers, o.concurrency)}"
          f"; {o.sessions} sessions x {o.messages} messages at {o.latency:g}s, {o.repeat} pair(s); watched = "
          f"console fleet panel every {o.poll_every:g}s, every /metrics every {o.scrape_every:g}s", flush=True)
    logdir = Path(tempfile.mkdtemp(prefix="chatq-bench-ops-"))
    with Processes(logdir) as procs:
        bench = OpsBench(o, procs)
        with run.phases(bench, logdir):
            bench.start()
            bench.start_serve({"CHATQ_API_KEYS": ""})  # open: its console shows the namespace the node runs
            bench.await_node()  # again, now that the API's /metrics is there to check
            bench.warm_up()
            bench.pairs()
            scrape_ms = bench.scrape_cost()
    shutil.rmtree(logdir, ignore_errors=True)
    pairs = ratios(bench.runs)
    updates = metric_updates_us()
    print("\nOps cost: the same workload watched (metrics served and scraped, the console's fleet panel polled) "
          "and unwatched (CPU ms per job by process; client = this process: submit + ChatClient.wait; watchers = "
          "its polling thread; panels / scrapes = requests answered)")
    print(cost_table(bench.runs, bench.seen))
    print("Workers, watched / unwatched, each back-to-back pair:")
    print("  " + ", ".join(f"{a:.3f} / {b:.3f} = {x:.3f}x" for a, b, x in pairs))
    off = [r.cpu_ms.get("workers", 0.0) for r in bench.runs if r.name == "unwatched"]
    share = f" = {100 * updates / 1000 / statistics.median(off):.2f}% of the workers' CPU per job unwatched" if off else ""
    print(f"One job's metric updates, counted whether or not they are served (9 updates, timed alone): "
          f"{updates:.1f} us{share}")
    processes = len(bench.metrics) - 1  # the workers' processes (the last URL is the API's)
    rate = statistics.median(r.rate for r in bench.runs if r.name == "unwatched")
    per_job = processes * scrape_ms / o.scrape_every / (rate * statistics.median(off)) if off else math.nan
    print(f"One scrape of a worker process's /metrics, timed at rest ({o.scrapes} back to back): {scrape_ms:.2f} ms "
          f"of its CPU; every {o.scrape_every:g}s on each of the {processes} process(es), at the unwatched runs' "
          f"{rate:.0f} jobs/s: {per_job * 100:.3f}% of the workers' CPU per job")
    checks = targets(pairs, bench.runs, bench.seen)
    report.print_targets(checks)
    if o.json:
        o.json.write_text(json.dumps({
            "machine": run.machine(), "argv": sys.argv[1:], "metric_updates_us": updates, "scrape_ms": scrape_ms,
            "runs": [asdict(r) | {"rate": r.rate, "watched": asdict(w)} for r, w in zip(bench.runs, bench.seen)]},
            default=str, indent=1))
    return 0 if checks[-1][1] else 1


if __name__ == "__main__":
    sys.exit(main())
