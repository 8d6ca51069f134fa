"""py-spy profiles of a benchmark phase, and a summary of where the CPU went.

``run.py --profile DIR`` records every chatq worker process and the driving process (the client)
during each chatq phase, only while a thread holds the GIL (``--gil``: CPU, not waiting), without
pausing them (``--nonblocking``). Writes collapsed stacks (``DIR/<phase>-<name>.txt``, which
speedscope and flamegraph.pl read) and prints the top functions of each.

    python -m bench.profile DIR/1s-worker0.txt [--filter run_session]   # summarise a profile
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
                [exe, "record", "--pid", str(pid), "--gil", "--nonblocking", "--threads", "-r", str(self.rate),
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


def main() -> None:
    parser = argparse.ArgumentParser(description="Summarise a collapsed-stack profile from py-spy.")
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--filter", help="only stacks containing this text")
    args = parser.parse_args()
    for f in args.files:
        print(summarize(f, args.top, args.filter))


if __name__ == "__main__":
    main()
