"""py-spy profiles of a benchmark phase, and a summary of where the CPU went.

``run.py --profile DIR`` records every chatq worker process and the driving process (the client)
during each chatq phase, only while a thread holds the GIL (``--gil``: CPU, not waiting), without
pausing them (``--nonblocking``). Writes collapsed stacks (``DIR/<phase>-<name>.txt``, which
speedscope and flamegraph.pl read) and prints the top functions of each.

    python -m bench.profile DIR/1s-worker0.txt [--filter run_session]   # summarise a profile
    python -m bench.profile DIR/backlog-1s-*-worker0.txt --parts --jobs 3000,3000  # ms per job by part

``--parts`` sorts every sample into the part of chatq (or of the benchmark's client) its stack
passes through (``PARTS``: the first that matches wins) and prints, with ``--jobs``, GIL-holding
milliseconds per job of each: the same parts side by side across runs show what grows with the
number of sessions, waiting threads or the latency. At 100 Hz one sample is 10 ms.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path


class Profiler:
    """``with Profiler({"worker0": pid}, out_dir, "1s"):`` records each pid until the block ends."""

    def __init__(self, pids: dict[str, int], out_dir: Path, phase: str, rate: int = 100):
        self.pids = pids
        self.out_dir = out_dir
        self.phase = phase
        self.rate = rate
        self.procs: list[subprocess.Popen] = []
        self.files: list[Path] = []

    def __enter__(self) -> Profiler:
        beside = Path(sys.executable).parent / "py-spy"
        exe = str(beside) if beside.exists() else shutil.which("py-spy")
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in self.pids.items():
            out = self.out_dir / f"{self.phase}-{name}.txt"
            self.files.append(out)
            self.procs.append(subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--subprocesses", "--gil", "--nonblocking", "--threads", "-r", str(self.rate),
                 "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def summarize(path: Path, top: int = 20, contains: str | None = None) -> str:
    """Top functions by self and inclusive samples, in % of the (filtered) samples."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().split("\n"):  # not splitlines(): frame names may hold \x1c etc.
        stack, _, count = line.rpartition(" ")
        if not stack or (contains and contains not in stack):
            continue
        if not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return f"{path.name}: no samples"
    lines = [f"{path.name}: {total} samples" + (f" containing {contains!r}" if contains else "")]
    lines += ["  self:"] + [f"    {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    lines += ["  inclusive:"] + [f"    {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top * 2)]
    return "\n".join(lines)


# (part, substrings of a frame that put a stack in it); first match wins, so the specific go first.
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("bench: monitor, bookkeeping", ("bench/procs.py", "_Timings.fill", "psutil")),
    ("worker: sweeper (its wake-ups)", ("Sweeper.",)),
    ("worker: lease renewals", ("LeaseKeeper.",)),
    ("worker: hand-off listener", ("Runtime._listen", "Handoff.")),
    ("worker: take script", ("SessionMachine.take", "SessionQueue.take")),
    ("worker: commit script", ("SessionMachine.commit", "SessionQueue.commit")),
    ("worker: provider call (SDK, HTTP)", ("Provider._call",)),
    ("worker: rest of a job (agent, decode)", ("SessionRunner.",)),
    ("worker: Celery task call around chatq", ("apply_target", "concurrent/futures/thread.py")),
    ("worker: Celery consumer (delivery, ack, QoS)", ("asynloop", "Consumer.start")),
    ("client: submit script", ("SessionMachine.submit", "SessionQueue.submit")),
    ("client: wake-up publish (Celery)", ("ChatClient.wake",)),
    ("client: rest of submit (validation)", ("ChatClient.submit",)),
    ("client: result notifications (pub/sub)", ("DoneListener.", "PubSub.")),
    ("client: wait (job record reads)", ("JobStore.wait",)),
    ("client: waiting threads", ("Burst._waiter", "Queue.get")),
]


def parts(path: Path) -> collections.Counter[str]:
    """Samples per part (``PARTS``; unmatched stacks under "other: <their leaf frame>")."""
    out: collections.Counter[str] = collections.Counter()
    for line in path.read_text().split("\n"):
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        name = next((part for part, marks in PARTS if any(m in stack for m in marks)), None)
        out[name or "other: " + stack.split(";")[-1]] += int(count)
    return out


def parts_table(files: list[Path], jobs: list[int] | None = None, rate: int = 100, top: int = 25) -> str:
    """Each part's share of every profile, side by side: ms per job with ``jobs``, else % of samples."""
    counted = [parts(f) for f in files]
    names = sorted({n for c in counted for n in c}, key=lambda n: -max(c[n] / max(1, sum(c.values()))
                                                                      for c in counted))
    head = [f.stem for f in files]
    unit = "GIL ms per job" if jobs else "% of samples"

    def cell(c: collections.Counter[str], n: str, i: int) -> str:
        return f"{1000 / rate * c[n] / jobs[i]:.2f}" if jobs else f"{100 * c[n] / max(1, sum(c.values())):.1f}"

    width = max(len(n) for n in names[:top] + ["total"])
    lines = [f"{unit:<{width}}  " + "  ".join(f"{h:>24}" for h in head)]
    for n in names[:top]:
        lines.append(f"{n:<{width}}  " + "  ".join(f"{cell(c, n, i):>24}" for i, c in enumerate(counted)))
    total = ["%.2f" % (1000 / rate * sum(c.values()) / jobs[i]) if jobs else f"{sum(c.values())} samples"
             for i, c in enumerate(counted)]
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{t:>24}" for t in total))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Summarise a collapsed-stack profile from py-spy.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--filter", help="only stacks containing this text")
    parser.add_argument("--parts", action="store_true", help="the files side by side, by part of chatq (PARTS)")
    parser.add_argument("--jobs", help="with --parts: jobs of each file's run, comma-separated: ms per job")
    args = parser.parse_args()
    if args.parts:
        jobs = [int(x) for x in args.jobs.split(",")] if args.jobs else None
        if jobs and len(jobs) != len(args.files):
            parser.error("--jobs needs one count per file")
        print(parts_table(args.files, jobs, top=args.top))
        return
    for f in args.files:
        print(summarize(f, args.top, args.filter))


if __name__ == "__main__":
    main()
