"""What each prototype fix gains: ``bench/run.py`` per variant, chatq only, fresh processes each.

Worker-side fixes are measured on backlog runs (the workload is queued, then the node takes it
up), with the client-side fixes on in every variant, so that the one-process producer never
limits the node: jobs/s and the workers' CPU per job. Client-side fixes are measured on the
usual burst (producer and waiters live): the client's CPU per job and how fast it submits.
Single runs on this 2-core machine vary by ~10-15% (more when anything else runs on it):
prefer CPU per job to jobs/s, and ``--repeat`` for medians.

    .venv/bin/python bench/ab.py                     # both tables, about 10 minutes
    .venv/bin/python bench/ab.py --side worker --repeat 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import patches  # noqa: E402


def run(patch_names: list[str], mode_args: list[str], out: Path) -> list[dict]:
    argv = [sys.executable, str(ROOT / "bench" / "run.py"), "--skip", "baseline,limit", "--open-rate", "0",
            "--json", str(out), *mode_args]
    if patch_names:
        argv += ["--patch", ",".join(patch_names)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"{patch_names}: run.py failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return [r for r in json.loads(out.read_text())["runs"] if r["name"].startswith("chatq")]


def measure(variants: dict[str, list[str]], mode_args: list[str], repeat: int, tmp: Path) -> dict:
    results: dict[str, dict[float, list[dict]]] = {}
    for name, names in variants.items():
        for i in range(repeat):
            for r in run(names, mode_args, tmp / f"{name}-{i}.json"):
                results.setdefault(name, {}).setdefault(r["latency"], []).append(r)
            print(f"  {name}: run {i + 1} done", file=sys.stderr, flush=True)
    return results


def table(results: dict, columns: list[tuple[str, object]]) -> str:
    """One row per variant; per latency, the median of each column and jobs/s relative to the first."""
    latencies = sorted({lat for by in results.values() for lat in by})
    head = "variant".ljust(30) + "".join(f"{f'{lat:g}s {title}':>22}" for lat in latencies for title, _ in columns)
    lines = [head]
    for name, by in results.items():
        cells = [f"{statistics.median(get(r) for r in by[lat]):22.2f}" for lat in latencies for _, get in columns]
        lines.append(name.ljust(30) + "".join(cells))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=["worker", "client", "both"], default="both")
    p.add_argument("--latency", default="0,1")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="chatq-ab-"))
    client_fixes = list(patches.CLIENT)
    if args.side in ("worker", "both"):
        variants = {"client fixes only": client_fixes,
                    **{f"+ {w}": [*client_fixes, w] for w in patches.WORKER},
                    "+ all worker fixes": [*client_fixes, *patches.WORKER]}
        res = measure(variants, ["--latency", "", "--backlog", args.latency], args.repeat, tmp)
        print("\nWorker-side fixes, backlog runs (client fixes on in every row)")
        print(table(res, [("jobs/s", lambda r: r["rate"]), ("worker ms/job", lambda r: r["cpu_ms"]["workers"])]))
    if args.side in ("client", "both"):
        variants = {"stock": [], **{f"+ {c}": [c] for c in client_fixes}, "+ all client fixes": client_fixes}
        res = measure(variants, ["--latency", args.latency, "--backlog", ""], args.repeat, tmp)
        print("\nClient-side fixes, bursts (stock workers)")
        print(table(res, [("jobs/s", lambda r: r["rate"]), ("client ms/job", lambda r: r["cpu_ms"]["client"]),
                          ("submits/s", lambda r: r["jobs"] / r["submit_seconds"])]))


if __name__ == "__main__":
    main()
