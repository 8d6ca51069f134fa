"""A throwaway redis-server for the client micro-benchmarks: its command counts (``INFO
commandstats``) are the benchmark's alone, which the shared Redis's are not."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from .procs import free_port


@contextmanager
def private_redis() -> Iterator[str]:
    """Start ``redis-server`` (no persistence) on a free port; yields its URL, stops it on exit."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server is not on PATH; pass --redis URL instead")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="chatq-bench-redis-") as tmp:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            probe = redis.Redis.from_url(url)
            deadline = time.monotonic() + 10
            while True:
                try:
                    probe.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            probe.close()
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


def command_calls(r: redis.Redis) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT``."""
    return {name.removeprefix("cmdstat_"): int(stats["calls"])
            for name, stats in r.info("commandstats").items()}
