"""chatq benchmark: chatq vs the plain Celery pattern vs the bare SDK, on this machine, in one run.

Starts Redis if needed, the project's OpenAI-compatible test server (its latency is switched per
phase through ``/control``), a chatq worker node and a baseline Celery worker, then for each
provider latency runs the same workload (S sessions × M messages, all submitted up front) through
chatq, the baseline and the no-queue limit, plus an open-loop run at a fixed rate for the queue
overhead. Prints the tables and the issue's targets. Everything lives in its own Redis DBs and
namespace/queue names, and every process it starts is stopped on exit, failure or Ctrl-C.

    .venv/bin/python bench/run.py --repeat 3     # the figures in RESULTS.md (about 15 minutes)
    .venv/bin/python bench/run.py                # one run of each (about 5 minutes)
    .venv/bin/python bench/run.py --quick        # a tiny workload, for the test suite
    .venv/bin/python bench/run.py --preset capacity  # long latencies, one default `chatq worker` (~10 min)
    .venv/bin/python bench/run.py --preset peer  # vs the tuned plain pattern: threads and gevent pools
    .venv/bin/python bench/run.py --store cluster  # chatq's store on a local 3-master Redis Cluster

Presets only change defaults: any option given beside one wins.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402

from bench import baseline_load, chatq_load, cluster_store, limit, proc_stats, report, workload  # noqa: E402
from bench.procs import Monitor, Processes, TestServerControl, ensure_redis, free_port, start_testserver  # noqa: E402
from bench.profile import Profiler, summarize  # noqa: E402
from bench.stats import Run  # noqa: E402


PRESETS: dict[str, dict[str, object]] = {
    # Issue 16's long-latency backlog runs on one `chatq worker` exactly as a user starts it (its
    # defaults decide the node's shape), beside the 1 s runs whose CPU per job they are held to.
    "capacity": dict(latency="", backlog="1:600x5,1:3000x1,5:3000x1,30:6000x1", budget=150,
                     workers=1, concurrency=0, open_rate=0, skip="baseline,limit"),
    # "600 jobs over 300 sessions" at 0.25 s: one default `chatq worker` against the tuned plain
    # pattern on a threads pool (the 1.5x target's peer) and on gevent.
    "peer": dict(latency="0.25", sessions=300, messages=2, backlog="", workers=1, concurrency=0,
                 open_rate=0, baseline="threads,gevent", repeat=3, skip="limit"),
}


# --quick: a tiny workload that still runs every phase; the test suite's smoke run.
QUICK: dict[str, object] = dict(sessions=8, messages=3, latency="0,0.05", workers=1, concurrency=16, open_rate=20,
                                open_seconds=1, baseline_seconds=2, backlog="0.05")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS))
    pre.add_argument("--quick", action="store_true")
    known = pre.parse_known_args(argv)[0]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="capacity: the long-latency backlog runs; peer: chatq vs the tuned plain pattern at 0.25 s")
    p.add_argument("--sessions", type=int, default=600, help="sessions per workload")
    p.add_argument("--messages", type=int, default=5, help="messages per session")
    p.add_argument("--arrival", choices=["random", "rounds"], default="random",
                   help="order of the submissions: sessions interleaved at random, or round by round")
    p.add_argument("--latency", default="0,0.25,1", help="provider latencies in seconds, comma-separated")
    p.add_argument("--backlog", default="1", metavar="LATENCY[:SxM],...",
                   help="backlog runs (the workload queued first, then taken up at once), each at a latency, "
                        "optionally with its own sessions x messages; '' to skip")
    p.add_argument("--budget", type=float, default=0,
                   help="measure a backlog run for at most this many seconds after it is taken up; the rest "
                        "then runs at latency 0, unmeasured, and is checked (0: measure until every job is done)")
    p.add_argument("--waiters", choices=["threads", "listen"], default="threads",
                   help="how the client waits for chatq's jobs: a thread per session calling ChatClient.wait, as "
                        "an application does, or one thread listening to the done notifications only (the "
                        "node's figures without the waiting client's cost)")
    p.add_argument("--workers", type=int, default=3, help="chatq worker processes (one node)")
    p.add_argument("--concurrency", type=int, default=200,
                   help="threads per chatq worker process (CHATQ_CONCURRENCY); 0: `chatq worker`'s own default")
    p.add_argument("--baseline", default="prefork",
                   help="the plain pattern's Celery pools, comma-separated: prefork (Celery's default), threads "
                        "(-c 200), gevent (-c 1000); the first is the one ratios are taken against")
    p.add_argument("--open-rate", type=float, default=50, help="jobs/s of the open-loop overhead run (0: skip)")
    p.add_argument("--open-seconds", type=float, default=10)
    p.add_argument("--baseline-seconds", type=float, default=20,
                   help="time budget of a baseline run at latency > 0: its workload is cut to fit")
    p.add_argument("--repeat", type=int, default=1,
                   help="run chatq and the baseline this many times at each latency, alternately, and report "
                        "each one's median run and the median of the paired ratios (the machine's speed drifts)")
    p.add_argument("--skip", default="", help="contenders to skip, comma-separated: baseline,limit")
    p.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server (no DB number)")
    p.add_argument("--store", choices=["single", "cluster"], default="single",
                   help="chatq's store: a DB of --redis, or a local 3-master Redis Cluster the benchmark starts "
                        "and stops (its broker stays on --redis; bench/cluster_store.py)")
    p.add_argument("--dbs", default="12,12,10,11",
                   help="Redis DBs: chatq store, chatq broker (the store's, as chatq's default has it), baseline broker, "
                        "baseline results+history")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy the chatq workers and the client during each chatq phase (bench/profile.py)")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("--quick", action="store_true", help="a tiny workload: checks the benchmark runs")
    if known.preset:
        p.set_defaults(**PRESETS[known.preset])
    if known.quick:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    args.latencies = [float(x) for x in args.latency.split(",") if x.strip()]
    args.backlog = [_backlog_run(x, args.sessions, args.messages, p) for x in args.backlog.split(",") if x.strip()]
    args.skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    args.baseline = [x.strip() for x in args.baseline.split(",") if x.strip()]
    for pool in args.baseline:
        if pool not in baseline_load.POOLS:
            p.error(f"--baseline: unknown pool {pool!r}; choose from {', '.join(baseline_load.POOLS)}")
    if "baseline" in args.skip:
        args.baseline = []
    return args


def _backlog_run(spec: str, sessions: int, messages: int, p: argparse.ArgumentParser) -> tuple[float, int, int]:
    """'5:3000x1' -> (5.0, 3000, 1); '1' -> (1.0, the default sessions and messages)."""
    latency, _, shape = spec.strip().partition(":")
    try:
        if shape:
            s, _, m = shape.lower().partition("x")
            sessions, messages = int(s), int(m)
        return float(latency), sessions, messages
    except ValueError:
        p.error(f"--backlog: {spec!r} is not LATENCY or LATENCY:SESSIONSxMESSAGES")
        raise


class Bench:
    """One benchmark run: its names, its processes, and the phases that fill ``runs``."""

    def __init__(self, args: argparse.Namespace, procs: Processes, cluster: cluster_store.ClusterStore | None = None):
        self.args = args
        self.procs = procs
        self.cluster = cluster
        self.tag = f"bench-{uuid.uuid4().hex[:6]}"
        store, broker, base_broker, base_store = (f"{args.redis}/{d}" for d in args.dbs.split(","))
        if cluster:
            store = cluster.url
        self.urls = {"store": store, "broker": broker, "base_broker": base_broker, "base_store": base_store}
        self.runs: list[Run] = []
        self.open_runs: list[Run] = []
        self.paired: dict[tuple[float, str], list[float]] = {}  # (latency, baseline) -> chatq/baseline rates
        self.baselines: list[baseline_load.Baseline] = []
        self.baseline_workers: list = []
        self.backlogs = 0
        self.api: str | None = None  # `chatq serve`, for the benchmarks that start it (start_serve)
        self.api_proc = None

    # set-up
    def start(self) -> None:
        from chatq.tasks.settings import Settings

        a = self.args
        self.base_url, root = start_testserver(self.procs, 0.0)
        self.server = TestServerControl(root)
        self.server_pid = self.procs.children[-1].pid
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": "bench"}
        self.chatq_env = {**env, "CHATQ_REDIS_URL": self.urls["store"], "CHATQ_BROKER_URL": self.urls["broker"],
                          "CHATQ_NAMESPACE": self.tag, "CHATQ_QUEUE": self.tag}
        self.start_node()
        self.baseline_env = {"BENCH_BASELINE_BROKER": self.urls["base_broker"],
                             "BENCH_BASELINE_BACKEND": self.urls["base_store"],
                             "BENCH_BASELINE_QUEUE": f"{self.tag}-baseline", "BENCH_BASELINE_PREFIX": self.tag}
        if a.baseline:
            module = baseline_load.load(self.baseline_env)
            for pool in a.baseline:
                base = baseline_load.Baseline(pool, module, f"{self.tag}-baseline-{pool}")
                self.baselines.append(base)
                self.baseline_workers.append(self.procs.start(base.name, base.argv(), {**env, **self.baseline_env}))
        settings = Settings(redis_url=self.urls["store"], broker_url=self.urls["broker"],
                            namespace=self.tag, queue=self.tag)
        self.client = chatq_load.make_client(settings, waiters=self.waiters())
        self.r = _store_client(self.urls["store"])
        # every Redis serving this run's chatq: the one Redis, or the broker's and the cluster's nodes
        self.redis_pids = [int(redis.Redis.from_url(self.urls["broker"]).info("server")["process_id"])]
        if self.cluster:
            self.redis_pids += self.cluster.pids()
        self.r_base = redis.Redis.from_url(self.urls["base_store"])
        self.await_node()
        if self.baselines:
            self._await_workers(self.baselines[0].app.app, [f"{b.name}-{os.getpid()}@" for b in self.baselines],
                                self.baseline_workers)

    def waiters(self) -> int:
        """Threads that may wait on the client at once: its Redis pool is sized for them."""
        a = self.args
        return max([a.sessions, *(s for _, s, _ in a.backlog)]) + 64

    def start_node(self, env: dict[str, str] | None = None,
                   worker_env: Callable[[int], dict[str, str]] | None = None) -> None:
        """The chatq node: ``--workers`` x ``chatq worker``, with ``env`` added to the settings (and
        ``worker_env(i)`` to worker i's: a metrics port of its own, say)."""
        a = self.args
        chatq_env = {**self.chatq_env, **(env or {})}
        if a.concurrency:  # else exactly as a user starts it: the node's shape is `chatq worker`'s default
            # The setting rather than `-c`: read at start-up whatever the CLI's import order.
            chatq_env["CHATQ_CONCURRENCY"] = str(a.concurrency)
            chatq_env["CHATQ_PROCESSES"] = "1"  # the node's shape as given: --workers processes
        self.workers = [
            self.procs.start(f"chatq-worker-{i}", [sys.executable, "-m", "chatq", "worker", "-l", "WARNING"],
                             {**chatq_env, **(worker_env(i) if worker_env else {})})
            for i in range(a.workers)
        ]

    def start_serve(self, env: dict[str, str] | None = None) -> str:
        """``chatq serve`` (the API and its console) on this run's namespace, once it answers; its URL."""
        port = free_port()
        self.api_proc = self.procs.start("chatq-api", [sys.executable, "-m", "chatq", "serve", "--port", str(port)],
                                         {**self.chatq_env, **(env or {})})
        self.api = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.api}/healthz", timeout=1).status_code == 200:
                    return self.api
            except httpx.HTTPError:
                pass
            if self.api_proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chatq serve did not start:\n{self.procs.log_tail(self.api_proc)}")
            time.sleep(0.1)

    def await_node(self) -> None:
        self._await_workers(self.client.app, self._node_names, self.workers)

    def stop_node(self) -> None:
        """Stop the chatq node (to start it again with other settings)."""
        for p in self.workers:
            self.procs.stop(p)
            self.procs.children.remove(p)
        self.workers = []

    def _node_names(self) -> list[str]:
        """Celery node-name prefixes of the chatq node's processes: ``chatq-<pid>@`` for a worker of
        one process, ``chatq-<pid>.<i>@`` for each process a ``chatq worker`` supervises."""
        per = [proc_stats.tree(p.pid) for p in self.workers]
        names = []
        for p, tree in zip(self.workers, per):
            children = len(tree) - 1
            names += [f"chatq-{p.pid}.{i}@" for i in range(children)] if children else [f"chatq-{p.pid}@"]
        return names

    def _await_workers(self, app, names, procs: list) -> None:
        """Until every one of ``names`` (node-name prefixes, or a function giving them: a node's
        processes appear as it starts them) answers a ping: the broker's DB may hold other
        benchmark runs' workers, which also answer."""
        deadline = time.monotonic() + 60
        while True:
            answered = {node for reply in app.control.ping(timeout=0.5) for node in reply}
            wanted = names() if callable(names) else names
            if all(any(node.startswith(n) for node in answered) for n in wanted):
                return
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.name} exited:\n{self.procs.log_tail(p)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not answer a ping within 60 s: {wanted}")

    def node(self) -> str:
        a = self.args
        each = f"{a.concurrency} threads" if a.concurrency else "its defaults"
        return f"{a.workers} x `chatq worker` ({each})"

    def warm_up(self) -> None:
        """Threads, connections and imports get created here, not inside a measured phase."""
        self.server.set(0.0)
        wl = workload.make(f"{self.tag}-warm", min(self.args.sessions, 200), 1)
        chatq_load.burst(self.client, wl, 0.0, timeout=60)
        chatq_load.delete_job_records(self.r, self.tag)
        for base in self.baselines:
            run = baseline_load.burst(base, workload.make(f"{self.tag}-{base.pool}-warm", 20, 1), 0.0, timeout=60)
            _delete(self.r_base, [f"celery-task-meta-{i}" for i in run.ids])

    # phases
    def _monitor(self, node: list[int], groups: dict[str, list[int]]) -> Monitor:
        return Monitor(node, {"client": [os.getpid()], **groups, "server": [self.server_pid],
                              "redis": self.redis_pids}, self.server)

    def _profile(self, phase: str):
        if not self.args.profile:
            return contextlib.nullcontext()
        pids = {"client": os.getpid(), **{f"worker{i}": p.pid for i, p in enumerate(self.workers)}}
        return Profiler(pids, self.args.profile, phase)

    def _finish(self, run: Run, mon: Monitor) -> None:
        """Calls in flight, memory and CPU per job: the submitting thread's per submitted job, every
        other group's per job finished in the measured part (all of them, unless cut at a budget)."""
        run.max_in_flight = mon.max_in_flight
        busy = [n for n in mon.in_flight if n > 0]
        run.mean_in_flight = statistics.median(busy) if busy else 0
        run.peak_rss, run.peak_threads, run.peak_procs = mon.peak_rss, mon.peak_threads, mon.peak_procs
        done = max(1, run.total - run.unfinished)
        spent = dict(mon.cpu.spent)
        client = spent.pop("client") - mon.own_cpu
        submit = 0.0 if math.isnan(run.submit_cpu) else run.submit_cpu
        if not math.isnan(run.submit_cpu):
            run.cpu_ms["submit"] = 1000 * submit / max(1, run.total)
        run.cpu_ms["wait"] = 1000 * (client - submit) / done
        run.cpu_ms.update({name: 1000 * sec / done for name, sec in spent.items()})
        self.runs.append(run)
        _progress(run)

    @staticmethod
    def _memory(run: Run, r: redis.Redis, before: int, session_keys: list[str], job_keys: list[str]) -> None:
        """Redis memory per session and per finished job, then delete the job records.

        Exact from MEMORY USAGE of the keys; from INFO deltas (before, after, after deleting the
        job records) too, which carry tens of KB of noise, so only for 500+ sessions.
        """
        after = _used_memory(r)
        run.keys_per_session = _key_bytes(r, session_keys) / max(1, run.sessions)
        run.keys_per_job = _key_bytes(r, job_keys) / max(1, len(job_keys))
        _delete(r, job_keys)
        if run.sessions >= 500 and job_keys:
            without_jobs = _used_memory(r)
            run.redis_per_job = (after - without_jobs) / len(job_keys)
            run.redis_per_session = (without_jobs - before) / run.sessions

    def _wakeups(self) -> int:
        """Celery wake-ups (run_session tasks) this benchmark's chatq workers have run so far; -1
        if one did not answer in time."""
        from chatq.tasks.celery_app import RUN_SESSION

        names = self._node_names()
        stats = self.client.app.control.inspect(timeout=3).stats() or {}
        mine = [v for node, v in stats.items() if any(node.startswith(n) for n in names)]
        if len(mine) < len(names):
            return -1
        return sum(int(v.get("total", {}).get(RUN_SESSION, 0)) for v in mine)

    def latency_phase(self, latency: float) -> None:
        a = self.args
        pairs: list[tuple[Run, list[Run]]] = []
        for i in range(a.repeat):
            suffix = f"-r{i}" if a.repeat > 1 else ""
            chatq = self._chatq_run(latency, suffix)
            pairs.append((chatq, [self._baseline_run(base, latency, suffix) for base in self.baselines]))
        for j, base in enumerate(self.baselines):
            if all(b[j].rate for _, b in pairs):
                self.paired[(latency, base.name)] = [c.rate / b[j].rate for c, b in pairs]
        if a.repeat > 1:
            self._keep_median([c for c, _ in pairs])
            for j in range(len(self.baselines)):
                self._keep_median([b[j] for _, b in pairs])

        if "limit" not in a.skip:
            chatq_run = next(r for r in self.runs if r.latency == latency and r.name == "chatq")
            wl = workload.make(f"{self.tag}-limit{latency:g}", a.sessions, a.messages, a.arrival)
            self.server.set(latency)
            with self._monitor([], {}) as mon:
                run, histories = limit.run(self.base_url, wl, max(1, chatq_run.max_in_flight), latency)
            run.workload = wl.shape
            run.check = limit.check_sessions(histories, wl)
            self._finish(run, mon)

    def _chatq_run(self, latency: float, suffix: str, name: str = "chatq", words: int = 0,
                   chunk_delay: float = 0.0, stream: bool = False) -> Run:
        """The workload through the chatq node; ``words``: long replies, ``chunk_delay``: seconds
        between a streamed reply's chunks, ``stream``: every job submitted to be streamed (the
        streaming benchmark's)."""
        a = self.args
        label = "" if name == "chatq" else "-" + name.replace(" ", "-")
        wl = workload.make(f"{self.tag}{label}-L{latency:g}{suffix}", a.sessions, a.messages, a.arrival, words=words)
        self.server.set(latency, chunk_delay)
        before = _used_memory(self.r)
        with self._monitor([p.pid for p in self.workers], {"workers": [p.pid for p in self.workers]}) as mon, \
                self._profile(f"{latency:g}s{label}{suffix}"):
            run = chatq_load.burst(self.client, wl, latency, timeout=120 + 3 * a.messages * latency,
                                   waiters=a.waiters, stream=stream)
        run.name = name
        run.check = chatq_load.check_sessions(self.client, wl)
        _quiesce(redis.Redis.from_url(self.urls["broker"]), self.tag)
        k = self.client.keys
        self._memory(run, self.r, before, [key for sid in wl.sessions for key in (k.session(sid), k.messages(sid))],
                     list(self.r.scan_iter(k.job_pattern, count=1000)))
        self._finish(run, mon)
        return run

    def _baseline_run(self, base: baseline_load.Baseline, latency: float, suffix: str) -> Run:
        a = self.args
        wl = workload.make(f"{self.tag}-{base.pool}-L{latency:g}{suffix}", a.sessions, a.messages, a.arrival)
        cap = wl.jobs if latency == 0 else max(8, int(a.baseline_seconds * base.slots / latency))
        part = wl.prefix(min(wl.jobs, cap))
        self.server.set(latency)
        before = _used_memory(self.r_base)
        pid = self.baseline_workers[self.baselines.index(base)].pid
        with self._monitor([pid], {"workers": [pid]}) as mon:
            run = baseline_load.burst(base, part, latency, timeout=120 + part.jobs * latency)
        run.check = baseline_load.check_sessions(base, part)
        self._memory(run, self.r_base, before, [base.history_key(s) for s in part.sessions],
                     [f"celery-task-meta-{i}" for i in run.ids])
        self._finish(run, mon)
        return run

    def _keep_median(self, runs: list[Run]) -> None:
        """Keep one contender's median run (by jobs/s; the lower one of an even count), with lost,
        reordered and failed summed over all of its runs and every run's jobs/s and calls in flight."""
        if not runs:
            return
        median = sorted(runs, key=lambda r: r.rate)[(len(runs) - 1) // 2]
        median.check.lost = sum(r.check.lost for r in runs)
        median.check.reordered = sum(r.check.reordered for r in runs)
        median.failed = sum(r.failed for r in runs)
        median.repeats = [r.rate for r in runs]
        median.in_flight_repeats = [r.max_in_flight for r in runs]
        self.runs = [r for r in self.runs if not any(r is x for x in runs)] + [median]

    def backlog_phase(self, latency: float, sessions: int, messages: int) -> None:
        """The workload queued while the node does not consume, then taken up at once; with a
        budget, measured for that long after the take-up, the rest finished at latency 0."""
        a = self.args
        runs = []
        for i in range(a.repeat):
            suffix = f"-r{i}" if a.repeat > 1 else ""
            self.backlogs += 1  # the same latency and shape may come twice: sessions must be new each time
            wl = workload.make(f"{self.tag}-B{self.backlogs}-{latency:g}{suffix}", sessions, messages, a.arrival)
            self.server.set(latency)
            wakeups = self._wakeups()
            # Without a budget the deadline assumes no fewer than 50 calls in flight; it only stops a hung run.
            timeout = (a.budget + 300 + 2 * latency) if a.budget else 300 + wl.jobs * (latency + 1) / 50
            b = chatq_load.Burst(self.client, wl, latency, timeout=timeout, backlog=True, waiters=a.waiters,
                                 pause=lambda: self._signal_workers(signal.SIGSTOP),
                                 resume=lambda: self._signal_workers(signal.SIGCONT))
            with self._monitor([p.pid for p in self.workers], {"workers": [p.pid for p in self.workers]}) as mon, \
                    self._profile(f"backlog-{latency:g}s-{wl.shape}{suffix}"):
                b.submit()
                run = b.measure(a.budget)
            if run.unfinished:
                print(f"  latency {latency:g}s: {wl.shape} backlog measured for its {a.budget:g}s budget; "
                      f"finishing the other {run.unfinished} jobs at latency 0 (unmeasured)", flush=True)
                self.server.set(0.0)
                b.finish(run)
            run.wakeups = self._wakeups() - wakeups if wakeups >= 0 else -1
            run.check = chatq_load.check_sessions(self.client, wl)
            chatq_load.delete_job_records(self.r, self.tag)
            self._finish(run, mon)
            runs.append(run)
        if a.repeat > 1:
            self._keep_median(runs)

    def _signal_workers(self, sig: int) -> None:
        for p in self.workers:  # the whole node: a `chatq worker` and the processes it supervises
            for pid in proc_stats.tree(p.pid):
                os.kill(pid, sig)

    def open_loop_phase(self) -> None:
        a = self.args
        if a.open_rate <= 0:
            return
        self.server.set(0.0)
        n = max(1, int(a.open_rate * a.open_seconds))
        sessions = max(1, min(n, int(a.open_rate)))  # each session gets about one message a second

        def open_workload(prefix: str) -> workload.Workload:
            return workload.Workload([(f"{prefix}-s{i % sessions:05d}", i // sessions) for i in range(n)])

        run = chatq_load.open_loop(self.client, open_workload(f"{self.tag}-open"), a.open_rate, 0.0, timeout=60)
        self.open_runs.append(run)
        _progress(run, f"open loop {a.open_rate:g}/s")
        for base in self.baselines:
            run = baseline_load.open_loop(base, open_workload(f"{self.tag}-{base.pool}-open"), a.open_rate, 0.0,
                                          timeout=60)
            _delete(self.r_base, [f"celery-task-meta-{i}" for i in run.ids])
            self.open_runs.append(run)
            _progress(run, f"open loop {a.open_rate:g}/s")

    def clean_redis(self) -> None:
        """Delete every key this run made (its DBs may be shared with other benchmark runs)."""
        for url in self.urls.values():
            r = _store_client(url)
            _delete(r, list(r.scan_iter(f"*{self.tag}*", count=1000)))


def _store_client(url: str) -> redis.Redis | redis.RedisCluster:
    """A plain (bytes) client of a benchmark URL: one Redis, or a cluster for a ``redis+cluster://`` URL."""
    if cluster_store.is_cluster_url(url):
        return cluster_store.client(url)
    return redis.Redis.from_url(url)


def _used_memory(r: redis.Redis | redis.RedisCluster) -> int:
    """used_memory without the clients' buffers: a burst leaves hundreds of idle pooled
    connections behind (~20 KB each), which are not data. A cluster's: summed over its masters."""
    nodes = cluster_store.masters(r) if isinstance(r, redis.RedisCluster) else [r]
    total = 0
    for node in nodes:
        m = node.info("memory")
        total += int(m["used_memory"]) - int(m.get("mem_clients_normal", 0)) - int(m.get("mem_clients_slaves", 0))
    return total


def _quiesce(broker: redis.Redis, queue: str, timeout: float = 15) -> None:
    """Wait until the workers consumed every wake-up (the no-op ones left after a burst), so
    that the memory figures count data, not broker messages."""
    deadline = time.monotonic() + timeout
    while (broker.llen(queue) or broker.hlen("unacked")) and time.monotonic() < deadline:
        time.sleep(0.1)


def _delete(r: redis.Redis, keys: list[str]) -> None:
    for i in range(0, len(keys), 500):
        r.delete(*keys[i:i + 500])


def _key_bytes(r: redis.Redis, keys: list[str]) -> int:
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return sum(n or 0 for n in pipe.execute())


def _progress(run: Run, label: str = "") -> None:
    submitted = f" (submitted in {run.submit_seconds:.1f}s)" if not math.isnan(run.submit_seconds) else ""
    cut = f" of {run.total} (its {run.budget:g}s budget)" if run.budget else ""
    print(f"  {label or f'latency {run.latency:g}s'}: {run.name:<8} {run.workload} {run.jobs}{cut} jobs in "
          f"{run.elapsed:.1f}s{submitted} = {run.overall_rate:.1f}/s overall, {run.rate:.1f}/s steady, "
          f"{run.max_in_flight} in flight max, lost {run.check.lost}, reordered {run.check.reordered}"
          + (f", failed {run.failed}" if run.failed else "")
          + (f", errors: {run.errors[:2]}" if run.errors else ""), flush=True)


def bench_broker(args: argparse.Namespace) -> str:
    return f"{args.redis}/{args.dbs.split(',')[1]}"


def node_shape(workers: int, concurrency: int, each: str = "sessions") -> str:
    """How a run's chatq node is made, for its heading."""
    return f"{workers} worker process(es) x " + (f"{concurrency} {each}" if concurrency else "the `chatq worker` defaults")


@contextlib.contextmanager
def phases(bench: Bench, logdir: Path) -> Iterator[Bench]:
    """Where a benchmark runs its phases: on a failure it says where the processes' logs are; in any
    case every process is stopped and the run's keys are deleted."""
    try:
        yield bench
    except BaseException:
        print(f"benchmark failed; the processes' logs are in {logdir}", file=sys.stderr)
        raise
    finally:
        bench.procs.stop_all()
        bench.clean_redis()


def machine() -> str:
    return f"nproc {os.cpu_count()}, Python {platform.python_version()}, {platform.system()} {platform.machine()}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_redis()
    print(f"chatq benchmark: {machine()}" + (f", preset {args.preset}" if args.preset else ""))
    backlog = ", ".join(f"{lat:g}s {s}x{m}" for lat, s, m in args.backlog)
    pools = ", ".join(f"celery {p} x {baseline_load.POOLS[p][1]}" for p in args.baseline) or "skipped"
    print(f"  {args.sessions} sessions x {args.messages} messages ({args.arrival} arrival), latencies {args.latencies}, "
          f"backlog runs [{backlog}]" + (f" measured for at most {args.budget:g}s each" if args.budget else "")
          + f"; chatq node = {node_shape(args.workers, args.concurrency, 'threads')}"
          + f"; baseline = {pools}; chatq's client waits with "
          + ("a thread per session (ChatClient.wait)" if args.waiters == "threads" else "done notifications only"),
          flush=True)
    logdir = Path(tempfile.mkdtemp(prefix="chatq-bench-"))
    spread = None
    with Processes(logdir) as procs, contextlib.ExitStack() as stack:
        cluster = stack.enter_context(cluster_store.started(logdir)) if args.store == "cluster" else None
        if cluster:
            print(f"  chatq's store: a local Redis Cluster of {len(cluster.ports)} masters ({cluster.url}); "
                  f"its broker: {bench_broker(args)}", flush=True)
        bench = Bench(args, procs, cluster)
        with phases(bench, logdir):
            bench.start()
            if cluster:
                cluster.mark()
            bench.warm_up()
            for latency in args.latencies:
                bench.latency_phase(latency)
            for spec in args.backlog:
                bench.backlog_phase(*spec)
            bench.open_loop_phase()
            if cluster:
                spread = cluster.spread(bench.tag)
    shutil.rmtree(logdir, ignore_errors=True)
    ref = bench.baselines[0].name if bench.baselines else "baseline"
    latency_runs = [r for r in bench.runs if r.name != "chatq backlog"]
    if latency_runs:
        print("\nThroughput and correctness (same workload; a baseline is cut to its time budget at latency > 0)")
        print(report.throughput(bench.runs, ref))
    if bench.paired and args.repeat > 1:
        print(f"Each contender's median of {args.repeat} runs above; chatq/baseline of each back-to-back pair:")
        print(report.paired(bench.paired))
    backlog_runs = [r for r in bench.runs if r.name == "chatq backlog"]
    if backlog_runs:
        print(f"\nBacklog runs: the workload queued, then taken up at once by the node, {bench.node()}")
        print(report.backlog(backlog_runs))
    print("\nQueue overhead, ms (start: ready -> started; visible: finished -> the waiting client has it)")
    print(report.overhead(bench.runs))
    if bench.open_runs:
        print(report.overhead(bench.open_runs, label=f"open {args.open_rate:g}/s"))
    print("\nCPU ms per job, by process (client = this process: submit + wait, or the SDK for the limit; submit = "
          "its submitting thread, per submitted job; irq = the kernel's network interrupts; other = anything else "
          "on the machine)")
    print(report.cpu(bench.runs))
    print("\nMemory")
    print(report.memory(bench.runs))
    if spread:
        print("\nThe store's keys over the cluster's slots (after the run: sessions kept, job records deleted)")
        print(cluster_store.describe(spread))
    checks = report.targets(bench.runs, bench.open_runs, bench.paired, args.preset)
    report.print_targets(checks)
    if args.profile:
        for f in sorted(args.profile.glob("*.txt")):
            print("\n" + summarize(f, top=12))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "argv": sys.argv[1:], "node": bench.node(),
                                         "store": args.store, "spread": spread,
                                         "runs": [asdict(r) | {"rate": r.rate, "overall_rate": r.overall_rate}
                                                  for r in bench.runs + bench.open_runs]},
                                        default=str, indent=1))
    failed = sum(r.failed + r.check.lost + r.check.reordered for r in bench.runs + bench.open_runs
                 if r.name.startswith("chatq"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
