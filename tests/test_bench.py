"""The benchmark still runs end to end (bench/run.py --quick): never a speed assertion, which would
only measure whatever else this machine is doing."""

from __future__ import annotations

import subprocess
import sys
from importlib.util import find_spec

from .conftest import ROOT

# The gevent pool needs the bench extra (pip install -e '.[bench]'); the rest comes with the test extra.
POOLS = ["prefork", "threads", *(["gevent"] if find_spec("gevent") else [])]
CONTENDERS = ("chatq", "limit", *(f"baseline-{p}" if p != "prefork" else "baseline" for p in POOLS))


def _section(out: str, start: str, end: str) -> list[list[str]]:
    """The rows of the table between two headings, split on whitespace (header and rule dropped)."""
    return [line.split() for line in out.split(start)[1].split(end)[0].strip().splitlines()[3:]]


def test_quick_benchmark_runs_and_chatq_loses_no_turn():
    # Every contender of the plain pattern (prefork, and the tuned threads and gevent pools), and a
    # backlog run cut at its budget: the cheap versions of the capacity and peer presets' parts.
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick",
                           "--baseline", ",".join(POOLS), "--backlog", "0.05,1:32x1", "--budget", "0.5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    for heading in ("Throughput and correctness", "Backlog runs", "Queue overhead", "CPU ms per job", "Memory",
                    "Targets"):
        assert heading in out
    rows = _section(out, "Throughput and correctness", "Backlog runs")
    names = {(r[0], r[1], r[2] + (" backlog" if r[3] == "backlog" else "")) for r in rows}
    expected = {(lat, "8x3", name) for lat in ("0s", "0.05s") for name in CONTENDERS}
    assert names == expected | {("0.05s", "8x3", "chatq backlog"), ("1s", "32x1", "chatq backlog")}
    for r in rows:
        r = r[:3] + r[4:] if r[3] == "backlog" else r
        done, total = r[3].split("/")
        if r[1] != "32x1":
            assert done == total, r  # every job finished
        if r[2] in ("chatq", "limit"):
            assert r[-2:] == ["0", "0"], r  # lost, reordered (the baseline may lose some: that is its point)
    backlog = {r[0]: r for r in _section(out, "Backlog runs", "Queue overhead")}
    cut = backlog["1s"]
    # Cut at its budget, before any 1 s call could finish; the rest finished unmeasured, then checked.
    assert cut[1:5] == ["32x1", "0/32", "in", "0.5s"], cut
    assert backlog["0.05s"][2] == "24/24"
    # Each backlog run's wake-ups per session were counted (Celery's own task count): at least one each.
    for r in backlog.values():
        assert float(r[-5]) >= 1.0, r
    assert "chatq: zero turns lost or reordered, no failed job: 0" in out  # the cut run's late jobs included


def test_quick_streaming_benchmark_runs_and_prints_its_figures():
    # bench/streaming.py: the cost runs (each streaming setting, and off, at each latency) and the
    # open-loop chunk -> reader delays, with every reader's text checked against the reply; no speed asserted.
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "streaming.py"), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    rows = _section(out, "Streaming cost", "Client + workers")
    assert {(r[0], r[2] + " " + r[3]) for r in rows} == {(lat, f"stream {s}") for lat in ("0s", "0.05s")
                                                       for s in ("off", "auto", "always", "asked")}
    logged = {r[2] + " " + r[3]: float(r[-3]) for r in rows if r[0] == "0s"}
    assert logged["stream asked"] > logged["stream auto"] == 3.0, "only jobs asked to stream write text as it comes"
    for r in rows:
        done, total = r[4].split("/")
        assert done == total == "24", r
        assert r[-1] == "0", r  # lost + reordered
    delays = _section(out, "Chunk -> reader", "CPU ms per job of the open-loop runs")
    assert len(delays) == 1 and delays[0][0] in ("sse", "python"), delays
    assert delays[0][6] == "10/10", delays  # jobs done
    assert int(delays[0][10]) > 10, delays  # deltas measured: more than one a job
    assert delays[0][-3:] == ["0", "/", "0"], delays  # no reader error or wrong text, none unmatched
    assert "zero turns lost or reordered, no failed job, every reader's text whole: 0" in out


def test_quick_ops_cost_benchmark_runs_and_prints_its_pairs():
    # bench/ops_cost.py: a pair of runs, the node's metrics served and scraped with the console's fleet
    # panel polled, and neither; every figure printed, every watcher's request answered; no speed asserted.
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "ops_cost.py"), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    header = out.split("Ops cost")[1].splitlines()[1].split()
    rows = _section(out, "Ops cost", "Workers, watched / unwatched")
    assert sorted(r[1] for r in rows) == ["unwatched", "watched"], rows
    for r in rows:
        row = dict(zip(header, r))
        assert row["jobs_ok"] == "24/24" and row["lost+reordered"] == "0" and row["errors"] == "0", row
        for group in ("client", "workers", "api", "redis", "watchers"):
            float(row[group])  # a figure for every process group
        watched = row["setting"] == "watched"
        # Watched: the panel fetched and the worker's and the API's /metrics scraped, from the window's start.
        assert (int(row["panels"]) >= 1 and int(row["scrapes"]) >= 2) if watched else row["panels"] == row["scrapes"] == "0"
    assert len(out.split("Workers, watched / unwatched")[1].splitlines()[1].split(",")) == 1  # one pair's ratio
    assert "One job's metric updates" in out and "One scrape of a worker process's /metrics" in out
    assert "zero turns lost or reordered, no failed job, every watcher's request answered: 0" in out
