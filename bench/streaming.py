"""Issue 12's figures: what streaming costs, and how soon a streamed chunk reaches a reader.

Both phases run on ``run.py``'s machinery (its ``Bench``: the test server, the chatq node, the client,
CPU per process group, py-spy with ``--profile``).

**cost**: the same workload (S sessions x M messages submitted up front, every reply ``--words``
words: 125 is about 200 tokens as the offline model counts them, a token per 4 characters) through
the node at each provider latency, the test server sending a streamed reply's chunks back to back,
no reader, in each of ``--modes``:

- ``off``: ``CHATQ_STREAM=off``, whole replies (what the others are compared with);
- ``auto``: the default, ``CHATQ_STREAM=auto``: a job streams once somebody asks for it, here nobody;
- ``always``: ``CHATQ_STREAM=always``: every reply streamed, its text kept for the commit while
  nobody follows (``CHATQ_STREAM_TEXT=followed``);
- ``asked``: ``auto``, every job submitted with ``stream=True`` (as ``ChatClient.chat(stream=True)``
  or a chat UI does): streamed, and its text written as it comes, though no reader comes here.

The node restarts for each setting; the order alternates (reversed every other repeat) because this
VM's speed drifts. Prints jobs/s and CPU ms per job by process (the client: submit +
``ChatClient.wait``, the same in all; the workers; the test server and Redis apart) and the issue's
target: streaming costs the client and workers at most 20% more per job.

**latency**: an open-loop run at each ``--rate`` (jobs/s, for ``--seconds``; each job its own
session), the test server pacing every reply ``--chunk-delay`` seconds a chunk, so rate x a reply's
duration (3.3 s by default) streams are live at once. A reader follows each job's events from its submission: over SSE (``GET
/v1/jobs/{id}/events`` of a ``chatq serve`` the bench starts; aiohttp, every stream on one asyncio
loop) or in Python (``ChatClient.stream``, a thread per job). For each ``message.delta`` read, the
delay from the test server writing the chunk that completed that text (its emission log: content
characters sent so far -> ``time.time()``) to the reader having it (``time.time()``; one machine, one
clock). Two seconds of the same, unmeasured, go first (the API's first streams, the readers' connections).
``--readers auto`` is SSE when the API serves it, else Python.

The emission time is taken just after the server's write: a server descheduled between the two (a
busy machine) dates the chunk late, and the delay comes out too short, even below zero.

    .venv/bin/python bench/streaming.py --skip latency --repeat 3             # RESULTS.md's cost (~10 min)
    .venv/bin/python bench/streaming.py --skip cost --readers sse,python      # RESULTS.md's delays (~3 min)
    .venv/bin/python bench/streaming.py --quick                               # a tiny run, for the test suite
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench import chatq_load, report, run, workload  # noqa: E402
from bench.procs import Monitor, Processes, ensure_redis  # noqa: E402
from bench.profile import Profiler, summarize  # noqa: E402
from bench.stats import Run, percentile  # noqa: E402

TERMINAL = {"job.succeeded", "job.failed", "job.cancelled"}
EVENTS_PATH = "/v1/jobs/{job_id}/events"
TARGET_COST = 1.20  # streaming's CPU per job (client + workers) at most 1.2x without
TARGET_P99_MS = 50.0
MODES = ("off", "auto", "always", "asked")
"""The cost phase's settings (the module's docstring): ``asked`` is ``auto`` with jobs submitted to stream."""
DEFAULT_MODE = "auto"

QUICK: dict[str, object] = dict(sessions=8, messages=3, latency="0,0.05", words=30, workers=1, concurrency=16,
                                rate=10, seconds=1, chunk_delay=0.01)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--quick", action="store_true")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=600, help="cost: sessions of the workload")
    p.add_argument("--messages", type=int, default=5, help="cost: messages per session")
    p.add_argument("--latency", default="0,1", help="cost: provider latencies in seconds, comma-separated")
    p.add_argument("--repeat", type=int, default=1, help="cost: runs of each setting at each latency")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"cost: settings compared, comma-separated: {', '.join(MODES)} (see above); off is always run")
    p.add_argument("--cost-chunk-delay", type=float, default=0.0,
                   help="cost: seconds between a streamed reply's chunks (0: back to back)")
    p.add_argument("--words", type=int, default=125,
                   help="words of every reply (the test server pads it, streamed or not): 125 ~ 200 tokens")
    p.add_argument("--waiters", choices=["threads", "listen"], default="threads",
                   help="cost: how the client waits for the jobs (see run.py)")
    p.add_argument("--workers", type=int, default=3, help="chatq worker processes (one node)")
    p.add_argument("--concurrency", type=int, default=200,
                   help="sessions per chatq worker process (CHATQ_CONCURRENCY); 0: `chatq worker`'s own default")
    p.add_argument("--flush-ms", type=float, help="the node's CHATQ_STREAM_FLUSH_MS (default: its own)")
    p.add_argument("--rate", default="5,10,20", help="latency: jobs submitted per second (open loop), comma-separated")
    p.add_argument("--seconds", type=float, default=15, help="latency: seconds of submitting")
    p.add_argument("--chunk-delay", type=float, default=0.025, help="latency: seconds between a reply's chunks")
    p.add_argument("--ttft", type=float, default=0.0, help="latency: provider latency before the first chunk")
    p.add_argument("--readers", default="auto",
                   help="latency: sse, python, both comma-separated, or auto (sse when the API serves it)")
    p.add_argument("--skip", default="", help="phases to skip, comma-separated: cost,latency")
    p.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis server (no DB number)")
    p.add_argument("--dbs", default="12,13,10,11", help="Redis DBs, as run.py's (the last two are unused)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy the workers, the API and this process during each phase (bench/profile.py)")
    p.add_argument("--json", type=Path, help="also write every figure to this file")
    p.add_argument("--quick", action="store_true", help="a tiny workload: checks the benchmark runs")
    if pre.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK)
    args = p.parse_args(argv)
    args.latencies = [float(x) for x in args.latency.split(",") if x.strip()]
    args.modes = ["off", *dict.fromkeys(m.strip() for m in args.modes.split(",") if m.strip() and m.strip() != "off")]
    if not set(args.modes) <= set(MODES):
        p.error(f"--modes: choose from {', '.join(MODES)}, not {args.modes}")
    args.skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    args.readers = [x.strip() for x in args.readers.split(",") if x.strip()]
    if not set(args.readers) <= {"sse", "python", "auto"}:
        p.error(f"--readers: choose from sse, python, auto, not {args.readers}")
    args.rates = [float(x) for x in str(args.rate).split(",") if x.strip()]
    if max(args.rates, default=0) * args.seconds > 900:
        p.error("--rate x --seconds over 900: the test server keeps the emission logs of its last 1,000 streams")
    return args


def bench_args(a: argparse.Namespace) -> argparse.Namespace:
    """``run.py``'s options for the ``Bench`` underneath: the same node, no baseline, no limit."""
    argv = ["--sessions", str(a.sessions), "--messages", str(a.messages), "--workers", str(a.workers),
            "--concurrency", str(a.concurrency), "--waiters", a.waiters, "--redis", a.redis, "--dbs", a.dbs,
            "--backlog", "", "--open-rate", "0", "--skip", "baseline,limit"]
    return run.parse_args(argv + (["--profile", str(a.profile)] if a.profile else []))


@dataclass
class Followed:
    """One job's events as a reader got them: (time.time() on receipt, type, data)."""

    events: list[tuple[float, str, dict]] = field(default_factory=list)
    error: str | None = None


class Readers:
    """Follows jobs' event logs, a reader per job, each recording when it got each event."""

    kind = ""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.got: dict[str, Followed] = {}
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Event()
        self._idle.set()

    def follow(self, job_id: str) -> None:
        with self._lock:
            self._pending += 1
            self._idle.clear()
        self.got[job_id] = Followed()
        self._start(job_id, self.got[job_id])

    def _start(self, job_id: str, into: Followed) -> None:
        raise NotImplementedError

    def _done(self) -> None:
        with self._lock:
            self._pending -= 1
            if not self._pending:
                self._idle.set()

    def wait(self, timeout: float) -> bool:
        """Until every reader got its job's terminal event (or failed)."""
        return self._idle.wait(timeout)

    def __enter__(self) -> Readers:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class PythonReaders(Readers):
    """``ChatClient.stream`` in a thread per job, as a Python application follows its jobs."""

    kind = "python"

    def __init__(self, client, timeout: float):
        super().__init__(timeout)
        self.client = client

    def _start(self, job_id: str, into: Followed) -> None:
        threading.Thread(target=self._read, args=(job_id, into), name="bench-reader", daemon=True).start()

    def _read(self, job_id: str, into: Followed) -> None:
        try:
            for event in self.client.stream(job_id, timeout=self.timeout):
                into.events.append((time.time(), event.type, event.data))
        except Exception as exc:  # counted, never hangs the run
            into.error = repr(exc)
        finally:
            self._done()


class SseReaders(Readers):
    """``GET /v1/jobs/{id}/events`` per job, every stream on one asyncio loop (aiohttp) in a thread:
    hundreds of live streams cost one thread, so the reader's own CPU inflates the delays least."""

    kind = "sse"

    def __init__(self, api: str, timeout: float):
        super().__init__(timeout)
        self.api = api
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="bench-sse", daemon=True)

    def __enter__(self) -> SseReaders:
        import aiohttp

        async def session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         timeout=aiohttp.ClientTimeout(total=self.timeout, sock_read=60))

        self._thread.start()
        self.session = asyncio.run_coroutine_threadsafe(session(), self.loop).result()
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.session.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def _start(self, job_id: str, into: Followed) -> None:
        asyncio.run_coroutine_threadsafe(self._read(job_id, into), self.loop)

    async def _read(self, job_id: str, into: Followed) -> None:
        try:
            async with self.session.get(self.api + EVENTS_PATH.format(job_id=job_id)) as resp:
                if resp.status != 200:
                    into.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    return
                kind, data = "message", []
                async for raw in resp.content:  # one line each; an event ends at a blank line
                    line = raw.decode().rstrip("\r\n")
                    if not line:
                        if data and kind == "error":  # the stream's last event: an error after it began
                            into.error = f"error event: {' '.join(data)[:200]}"
                            return
                        if data:
                            into.events.append((time.time(), kind, json.loads("\n".join(data))))
                            if kind in TERMINAL:
                                return
                        kind, data = "message", []
                    elif not line.startswith(":"):  # ":" starts a keep-alive comment
                        name, _, value = line.partition(":")
                        value = value[1:] if value.startswith(" ") else value
                        if name == "event":
                            kind = value
                        elif name == "data":
                            data.append(value)
        except Exception as exc:
            into.error = repr(exc)
        finally:
            self._done()


@dataclass
class Delays:
    """What one open-loop run's readers measured."""

    reader: str
    rate: float
    seconds: float
    chunk_delay: float
    words: int
    jobs: int = 0
    succeeded: int = 0
    lost: int = 0
    reordered: int = 0
    read_errors: int = 0
    text_wrong: int = 0  # the deltas a reader got did not add up to the reply
    unmatched: int = 0  # jobs without exactly one streamed reply at the server (restarted, retried)
    deltas: list[float] = field(default_factory=list)  # seconds: chunk written -> reader has the delta
    first: list[float] = field(default_factory=list)  # the same for each job's first delta
    chunks: int = 0  # chunks the server streamed to the measured jobs
    job_seconds: list[float] = field(default_factory=list)  # submitted -> finished
    live_max: int = 0  # the test server's streams in flight
    live_median: float = math.nan
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per job, by process group

    def ms(self, which: str, p: float) -> float:
        return percentile(getattr(self, which), p) * 1000


def measure_delays(d: Delays, got: dict[str, Followed], texts: dict[str, str], streams: list[dict],
                   replies: dict[str, str]) -> None:
    """Each delta's delay: from the emission log of the job's streamed reply, the time the chunk that
    brought the reply's text to the length read so far was written, to the time the reader had it."""
    by_text: dict[str, list[dict]] = {}
    for s in streams:
        by_text.setdefault(s["text"], []).append(s)
    for job_id, followed in got.items():
        if followed.error:
            d.read_errors += 1
            continue
        deltas = [(t, data) for t, kind, data in followed.events if kind == "message.delta"]
        if "".join(data["text"] for _, data in deltas) != replies[job_id]:
            d.text_wrong += 1
            continue
        mine = by_text.get(texts[job_id], [])
        if len(mine) != 1 or any(kind == "job.restarted" for _, kind, _ in followed.events):
            d.unmatched += 1
            continue
        sent = [c for c, _ in mine[0]["emissions"]]
        at = [t for _, t in mine[0]["emissions"]]
        d.chunks += len(sent)
        chars = 0
        for i, (t, data) in enumerate(deltas):
            chars += len(data["text"])
            k = bisect.bisect_left(sent, chars)
            delay = t - at[min(k, len(at) - 1)]
            d.deltas.append(delay)
            if i == 0:
                d.first.append(delay)


class StreamBench(run.Bench):
    """``run.Bench`` with the node restartable with streaming on or off, and ``chatq serve``."""

    def __init__(self, opts: argparse.Namespace, procs: Processes):
        super().__init__(bench_args(opts), procs)
        self.opts = opts
        self.mode: str | None = None  # the node's CHATQ_STREAM
        self.warmups = 0
        self.logs: list[dict[str, float]] = []  # per cost run: its event logs' entries and bytes per job
        self.repeats: list[int] = []  # per cost run: which repeat it belongs to
        self.delays: list[Delays] = []

    def waiters(self) -> int:
        # Python readers: a thread per live stream, each holding a pool connection while it blocks.
        o = self.opts
        live = max(o.rates, default=0) * (o.ttft + o.chunk_delay * (o.words + 3) + 10)
        return max(super().waiters(), int(live) + 64)

    def start_node(self, env: dict[str, str] | None = None) -> None:
        """The node with its default ``CHATQ_STREAM`` unless ``env`` says otherwise (``Bench.start``
        starts it so)."""
        env = {"CHATQ_STREAM": DEFAULT_MODE, **({"CHATQ_STREAM_FLUSH_MS": str(self.opts.flush_ms)}
                                               if self.opts.flush_ms is not None else {}), **(env or {})}
        super().start_node(env)
        self.mode = env["CHATQ_STREAM"]

    def set_mode(self, mode: str) -> None:
        """Restart the node with the ``CHATQ_STREAM`` that ``mode`` runs on (unless it already has
        it), and warm it up."""
        setting = DEFAULT_MODE if mode == "asked" else mode
        if self.mode == setting:
            return
        self.stop_node()
        self.start_node({"CHATQ_STREAM": setting})
        self.await_node()
        self.warm_up()

    def warm_up(self) -> None:
        """Connections, imports and the streaming path get made here, not inside a measured phase."""
        self.warmups += 1
        self.server.set(0.0)
        wl = workload.make(f"{self.tag}-warm{self.warmups}", min(self.args.sessions, 100), 1, words=self.opts.words)
        chatq_load.burst(self.client, wl, 0.0, timeout=60, stream=True)
        self._drop_jobs()

    def _drop_jobs(self) -> dict[str, float]:
        """Delete the namespace's job records and event logs; the logs' entries and bytes per job."""
        pattern = self.client.keys.job_pattern.removesuffix(":rec") + ":ev"
        logs = list(self.r.scan_iter(pattern, count=1000))
        pipe = self.r.pipeline(transaction=False)
        for key in logs:
            pipe.xlen(key)
            pipe.memory_usage(key, samples=0)
        out = pipe.execute()
        run._delete(self.r, logs)
        chatq_load.delete_job_records(self.r, self.tag)
        n = max(1, len(logs))
        return {"entries": sum(out[0::2]) / n, "bytes": sum(x or 0 for x in out[1::2]) / n}

    def start_api(self) -> bool:
        """``chatq serve`` on this namespace; whether it serves the SSE events endpoint."""
        self.start_serve()
        paths = httpx.get(f"{self.api}/openapi.json", timeout=10).json().get("paths", {})
        return any(p.endswith("/events") and p.startswith("/v1/jobs/") for p in paths)

    def _profile(self, phase: str):
        if not self.args.profile:
            return contextlib.nullcontext()
        pids = {"client": os.getpid(), **{f"worker{i}": p.pid for i, p in enumerate(self.workers)}}
        if self.api_proc is not None and self.api_proc.poll() is None:
            pids["api"] = self.api_proc.pid
        return Profiler(pids, self.args.profile, phase)

    # -- the phases ----------------------------------------------------------------------------

    def cost_phase(self) -> None:
        o = self.opts
        order = list(o.modes)
        for latency in o.latencies:
            for i in range(o.repeat):
                suffix = f"-r{i}" if o.repeat > 1 else ""
                for mode in order:
                    self.set_mode(mode)
                    self._chatq_run(latency, suffix, name=f"stream {mode}", words=o.words,
                                    chunk_delay=o.cost_chunk_delay, stream=mode == "asked")
                    self.repeats.append(i)
                    self.logs.append(self._drop_jobs())
                order.reverse()  # alternate, and no restart between repeats or latencies

    def latency_phase(self, reader: str, rate: float) -> None:
        o = self.opts
        self.set_mode("asked")
        n = max(1, round(rate * o.seconds))
        tag = f"{self.tag}-open{len(self.delays)}-{reader}"
        wl = workload.Workload([(f"{tag}-s{i:05d}", 0) for i in range(n)], o.words)
        duration = o.ttft + o.chunk_delay * (o.words + 3)
        timeout = o.seconds + 3 * duration + 60
        d = Delays(reader, rate, o.seconds, o.chunk_delay, o.words, jobs=n)
        readers = (SseReaders(self.api or "", timeout) if reader == "sse"
                   else PythonReaders(self.client, timeout))
        node = [p.pid for p in self.workers]
        groups = {"workers": node, **({"api": [self.api_proc.pid]} if reader == "sse" else {})}
        with readers:
            self.server.set(o.ttft, o.chunk_delay)
            # Unmeasured, the same for 2 s first: the API's first streams, connections, threads.
            warm = f"{self.tag}-warmopen{len(self.delays)}-{reader}"
            self._submit(readers, workload.Workload([(f"{warm}-s{i:05d}", 0) for i in range(max(1, round(2 * rate)))],
                                                    o.words), rate)
            readers.wait(timeout)
            with self._monitor(node, groups) as mon, self._profile(f"open-{rate:g}-{reader}"):
                texts = self._submit(readers, wl, rate)
                if not readers.wait(timeout):
                    print(f"  {reader}: readers still reading after {timeout:.0f}s", flush=True)
        self.server.set(0.0)
        self._fill(d, mon, n)
        jobs = self.client.jobs.get_many(list(texts))
        d.succeeded = sum(1 for job in jobs if job is not None and job.status == "succeeded")
        d.job_seconds = [(job.finished_at - job.created_at).total_seconds() for job in jobs
                         if job is not None and job.finished_at]
        check = chatq_load.check_sessions(self.client, wl)
        d.lost, d.reordered = check.lost, check.reordered
        replies = {job_id: workload.reply([{"role": "user", "content": text}], o.words)
                   for job_id, text in texts.items()}
        measure_delays(d, {job_id: readers.got[job_id] for job_id in texts}, texts, self.server.streams(tag), replies)
        self._drop_jobs()
        self.delays.append(d)
        print(f"  open loop {rate:g}/s x {o.seconds:g}s, {reader} readers: {d.succeeded}/{n} jobs, "
              f"{d.live_max} streams live max, {len(d.deltas)} deltas: p50 {d.ms('deltas', 50):.1f} ms, "
              f"p99 {d.ms('deltas', 99):.1f} ms, min {1000 * min(d.deltas, default=math.nan):.1f} ms"
              + (f", read errors {d.read_errors}" if d.read_errors else "")
              + (f", wrong text {d.text_wrong}" if d.text_wrong else ""), flush=True)
        errors = [f.error for f in readers.got.values() if f.error][:3]
        if errors:
            print(f"    e.g. {errors}", flush=True)

    def _submit(self, readers: Readers, wl: workload.Workload, rate: float) -> dict[str, str]:
        """Submit at ``rate`` jobs/s whatever the replies do (open loop), a reader following each from
        its submission; every job's message by its ID."""
        texts: dict[str, str] = {}
        t0 = time.monotonic() + 0.05
        for i, (sid, j) in enumerate(wl.order):
            pause = t0 + i / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            job_id = self.client.submit(wl.text(sid, j), sid, stream=True).job_id  # as a chat UI submits
            texts[job_id] = wl.text(sid, j)
            readers.follow(job_id)
        return texts

    @staticmethod
    def _fill(d: Delays, mon: Monitor, jobs: int) -> None:
        d.live_max = mon.max_in_flight
        busy = [x for x in mon.in_flight if x > 0]
        d.live_median = statistics.median(busy) if busy else 0
        spent = dict(mon.cpu.spent)
        spent["client"] -= mon.own_cpu  # this process: submitting and reading, without the monitor
        d.cpu_ms = {name: 1000 * sec / max(1, jobs) for name, sec in spent.items()}


# -- the tables ---------------------------------------------------------------------------------

def _client(r: Run) -> float:
    return r.cpu_ms.get("submit", 0.0) + r.cpu_ms.get("wait", 0.0)


def cost_table(runs: list[Run], logs: list[dict[str, float]]) -> str:
    groups = ["workers", "server", "redis", "irq", "other"]
    rows = []
    for r, log in zip(runs, logs):
        rows.append([f"{r.latency:g}s", r.workload, r.name, f"{r.jobs}/{r.total}", report._f(r.rate),
                     report._f(_client(r), 2), *(report._f(r.cpu_ms.get(g, math.nan), 2) for g in groups),
                     report._f(_client(r) + r.cpu_ms.get("workers", 0.0), 2), report._f(sum(r.cpu_ms.values()), 2),
                     report._f(log["entries"], 1), report._f(log["bytes"], 0),
                     str(r.check.lost + r.check.reordered)])
    return report._table(["latency", "workload", "streaming", "jobs ok", "jobs/s", "client", *groups,
                          "client+workers", "total", "log entries/job", "log B/job", "lost+reordered"], rows)


def cost_ratios(runs: list[Run], repeats: list[int]) -> dict[tuple[float, str], list[tuple[float, float, float]]]:
    """Per latency and setting, against the same repeat's ``off`` run (``repeats``: each run's):
    (CPU ms per job of client + workers with the setting, without, the ratio)."""
    out: dict[tuple[float, str], list[tuple[float, float, float]]] = {}
    offs = {(r.latency, i): r for r, i in zip(runs, repeats) if r.name == "stream off"}
    for r, i in zip(runs, repeats):
        off = offs.get((r.latency, i))
        if r.name == "stream off" or off is None:
            continue
        a, b = _client(r) + r.cpu_ms.get("workers", 0.0), _client(off) + off.cpu_ms.get("workers", 0.0)
        out.setdefault((r.latency, r.name.removeprefix("stream ")), []).append((a, b, a / b if b else math.nan))
    return out


def delay_table(ds: list[Delays]) -> str:
    rows = [[d.reader, f"{d.rate:g}/s x {d.seconds:g}s", f"{d.chunk_delay * 1000:g} ms", f"{d.succeeded}/{d.jobs}",
             f"{d.live_max} / {report._f(d.live_median, 0)}", str(len(d.deltas)),
             report._f(len(d.deltas) / max(1, d.jobs - d.unmatched - d.text_wrong - d.read_errors), 1),
             *(report._f(d.ms("deltas", p)) for p in (50, 90, 99)), report._f(max(d.deltas, default=math.nan) * 1000),
             f"{report._f(d.ms('first', 50))} / {report._f(d.ms('first', 99))}",
             report._f(statistics.median(d.job_seconds) if d.job_seconds else math.nan, 2),
             f"{d.read_errors + d.text_wrong} / {d.unmatched}"] for d in ds]
    return report._table(["reader", "open loop", "chunk every", "jobs ok", "live streams max / median", "deltas",
                          "deltas/job", "p50 ms", "p90", "p99", "max", "first delta p50 / p99",
                          "job s p50", "bad / unmatched"], rows)


def delay_cpu_table(ds: list[Delays]) -> str:
    groups = ["client", "workers", "api", "server", "redis", "irq", "other"]
    rows = [[d.reader, *(report._f(d.cpu_ms.get(g, math.nan), 2) for g in groups),
             report._f(sum(d.cpu_ms.values()), 2)] for d in ds]
    return report._table(["reader", *groups, "total"], rows)


def targets(ratios: dict[tuple[float, str], list[tuple[float, float, float]]], ds: list[Delays],
            runs: list[Run]) -> list[tuple[str, bool, str]]:
    out = []
    for (latency, mode), pairs in ratios.items():
        x = statistics.median(p[2] for p in pairs)
        each = f" (median of {len(pairs)} pairs: {', '.join(f'{p[2]:.2f}x' for p in pairs)})" if len(pairs) > 1 else ""
        on, off = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
        what = {"auto": "CHATQ_STREAM=auto (the default), no reader", "always": "CHATQ_STREAM=always, no reader",
                "asked": "jobs submitted to stream, no reader"}[mode]
        out.append((f"{latency:g}s, {what}: CPU per job (client + workers) <= {TARGET_COST:.1f}x streaming off",
                    x <= TARGET_COST, f"{on:.2f} vs {off:.2f} ms = {x:.2f}x{each}"))
    for d in ds:
        p99 = d.ms("deltas", 99)
        out.append((f"open loop {d.rate:g}/s, {d.reader} reader: chunk -> reader p99 < {TARGET_P99_MS:g} ms",
                    p99 < TARGET_P99_MS,
                    f"{p99:.1f} ms (p50 {d.ms('deltas', 50):.1f})"))
    bad = sum(r.check.lost + r.check.reordered + r.failed for r in runs) + sum(
        d.lost + d.reordered + (d.jobs - d.succeeded) + d.read_errors + d.text_wrong for d in ds)
    out.append(("zero turns lost or reordered, no failed job, every reader's text whole", bad == 0, str(bad)))
    return out


def main(argv: list[str] | None = None) -> int:
    o = parse_args(argv)
    ensure_redis()
    print(f"chatq streaming benchmark: {run.machine()}; node = {run.node_shape(o.workers, o.concurrency)}; "
          f"replies of {o.words} words", flush=True)
    logdir = Path(tempfile.mkdtemp(prefix="chatq-bench-stream-"))
    with Processes(logdir) as procs:
        bench = StreamBench(o, procs)
        with run.phases(bench, logdir):
            bench.start()
            bench.warm_up()
            if "cost" not in o.skip:
                chunks = f"a chunk every {o.cost_chunk_delay * 1000:g} ms" if o.cost_chunk_delay else "chunks back to back"
                print(f"cost: {o.sessions} sessions x {o.messages} messages, latencies {o.latencies}, {chunks}, "
                      f"settings {', '.join(o.modes)}, {o.repeat} run(s) each", flush=True)
                bench.cost_phase()
            if "latency" not in o.skip:
                readers = o.readers
                if set(readers) & {"sse", "auto"}:
                    has_sse = bench.start_api()
                    if not has_sse and "sse" in readers:
                        raise SystemExit(f"chatq serve has no {EVENTS_PATH} on this code: use --readers python")
                    readers = [("sse" if has_sse else "python") if r == "auto" else r for r in readers]
                    if not has_sse:
                        print(f"  (chatq serve has no {EVENTS_PATH} yet: the Python reader instead)", flush=True)
                        procs.stop(bench.api_proc)
                print(f"latency: open loop {', '.join(f'{r:g}' for r in o.rates)} jobs/s for {o.seconds:g}s, "
                      f"a chunk every {o.chunk_delay * 1000:g} ms, readers {', '.join(dict.fromkeys(readers))}",
                      flush=True)
                for rate in o.rates:
                    for reader in dict.fromkeys(readers):
                        bench.latency_phase(reader, rate)
    shutil.rmtree(logdir, ignore_errors=True)
    ratios = cost_ratios(bench.runs, bench.repeats)
    if bench.runs:
        print("\nStreaming cost: the same workload in each setting, no reader (CPU ms per job by process; "
              "client = this process: submit + ChatClient.wait; log = the job's event log in Redis)")
        print(cost_table(bench.runs, bench.logs))
        print("Client + workers, each setting / off, each repeat:")
        for (latency, mode), pairs in ratios.items():
            print(f"  {latency:g}s {mode}: " + ", ".join(f"{a:.2f} / {b:.2f} = {x:.2f}x" for a, b, x in pairs))
    if bench.delays:
        print("\nChunk -> reader: from the test server writing a chunk to the reader having the delta that "
              "completes its text (ms; first delta: each job's first)")
        print(delay_table(bench.delays))
        print("\nCPU ms per job of the open-loop runs (client = this process: submit + the readers)")
        print(delay_cpu_table(bench.delays))
    checks = targets(ratios, bench.delays, bench.runs)
    report.print_targets(checks)
    if o.profile:
        for f in sorted(o.profile.glob("*.txt")):
            print("\n" + summarize(f, top=12))
    if o.json:
        o.json.write_text(json.dumps({
            "machine": run.machine(), "argv": sys.argv[1:],
            "cost": [asdict(r) | {"rate": r.rate, "log": log} for r, log in zip(bench.runs, bench.logs)],
            "delays": [asdict(d) for d in bench.delays]}, default=str, indent=1))
    return 0 if checks[-1][1] else 1


if __name__ == "__main__":
    sys.exit(main())
