"""Can the test server hold N slow calls at once without becoming the benchmark's bottleneck?

Starts ``chatq.testing.server`` in its own process at a latency, opens N keep-alive connections
(in batches, so the listen backlog never overflows), sends one chat completion on each at the
same moment, and reports how many were in flight at once (the server's own count), how long the
last one took beyond the latency, and the server's CPU per call. The client is raw asyncio
streams, so it costs far less than any SDK and does not hide the server's limits behind its own.

    python bench/server_capacity.py --calls 6000 --latency 30 [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import proc_stats  # noqa: E402
from bench.procs import Processes, TestServerControl, start_testserver  # noqa: E402

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}).encode()


def request(host: str, port: int) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode() + BODY


async def _reply(reader: asyncio.StreamReader) -> int:
    """Read one response; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length")
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def _calls(host: str, port: int, n: int, batch: int) -> tuple[list[float], list[str]]:
    conns = []
    for i in range(0, n, batch):
        conns += await asyncio.gather(*(asyncio.open_connection(host, port) for _ in range(min(batch, n - i))))
        await asyncio.sleep(0.05)
    payload = request(host, port)
    errors: list[str] = []

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        t0 = time.monotonic()
        writer.write(payload)
        try:
            status = await _reply(reader)
            if status != 200:
                errors.append(f"HTTP {status}")
        except (OSError, asyncio.IncompleteReadError, StopIteration, ValueError) as exc:
            errors.append(repr(exc))
        return time.monotonic() - t0

    durations = await asyncio.gather(*(one(r, w) for r, w in conns))
    for _, w in conns:
        w.close()
    return list(durations), errors


def measure(control: TestServerControl, server_pid: int, host: str, port: int, calls: int, latency: float,
            batch: int) -> dict[str, float]:
    control.set(latency)
    cpu0 = proc_stats.cpu(server_pid)
    t0 = time.monotonic()
    durations, errors = asyncio.run(_calls(host, port, calls, batch))
    wall = time.monotonic() - t0
    cpu = proc_stats.cpu(server_pid) - cpu0
    stats = control.stats()
    durations.sort()
    return {"calls": calls, "errors": len(errors), "max_in_flight": stats["max_in_flight"],
            "p50_over_latency_ms": 1000 * (durations[len(durations) // 2] - latency),
            "max_over_latency_ms": 1000 * (durations[-1] - latency), "wall_s": wall,
            "server_cpu_ms_per_call": 1000 * cpu / calls, "server_rss_mib": proc_stats.rss(server_pid) / 2**20,
            "first_errors": errors[:3]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=6000)
    p.add_argument("--latency", type=float, default=30)
    p.add_argument("--batch", type=int, default=500, help="connections opened at once")
    p.add_argument("--repeat", type=int, default=1)
    args = p.parse_args(argv)
    with Processes(Path(tempfile.mkdtemp(prefix="chatq-server-capacity-"))) as procs:
        base_url, root = start_testserver(procs, 0.0)
        pid = procs.children[-1].pid
        host, port = root.removeprefix("http://").split(":")
        control = TestServerControl(root)
        ok = True
        for _ in range(args.repeat):
            out = measure(control, pid, host, int(port), args.calls, args.latency, args.batch)
            print(json.dumps(out), flush=True)
            ok = ok and not out["errors"] and out["max_in_flight"] >= args.calls
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
