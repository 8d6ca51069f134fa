"""The benchmark still runs end to end (bench/run.py --quick): never a speed assertion, which would
only measure whatever else this machine is doing."""

from __future__ import annotations

import subprocess
import sys

from .conftest import ROOT


def test_quick_benchmark_runs_and_chatq_loses_no_turn():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    for heading in ("Throughput and correctness", "Queue overhead", "CPU ms per job", "Memory", "Targets"):
        assert heading in out
    rows = [line.split() for line in out.split("Throughput and correctness")[1].split("Queue overhead")[0].splitlines()]
    rows = [r for r in rows if len(r) > 3 and r[1] in ("chatq", "baseline", "limit")]
    names = {(r[0], r[1] + (" backlog" if r[2] == "backlog" else "")) for r in rows}
    expected = {(lat, name) for lat in ("0s", "0.05s") for name in ("chatq", "baseline", "limit")}
    assert names == expected | {("0.05s", "chatq backlog")}
    for r in rows:
        r = r[:2] + r[3:] if r[2] == "backlog" else r
        done, total = r[2].split("/")
        assert done == total, r  # every job finished
        if r[1] in ("chatq", "limit"):
            assert r[-2:] == ["0", "0"], r  # lost, reordered (the baseline may lose some: that is its point)
    assert "chatq: zero turns lost or reordered, no failed job: 0" in out
