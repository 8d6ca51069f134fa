"""A throwaway local Redis Cluster (3 masters, no replicas) for chatq's tests and benchmark.

Why here: tests/test_cluster.py and bench/run.py --store cluster both need the same thing: a real
cluster made of ``redis-server --cluster-enabled yes`` processes on free ports in a temporary
folder, joined by ``redis-cli --cluster create``, and shut down after. One helper keeps the two in
step. Nothing is persisted (no RDB, no AOF). Needs the ``redis-server`` and ``redis-cli`` binaries
(``missing()`` names the absent ones so a caller can skip or refuse with a clear message).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

BINARIES = ("redis-server", "redis-cli")


def missing() -> list[str]:
    """The binaries a local cluster needs that are not on PATH."""
    return [b for b in BINARIES if shutil.which(b) is None]


def free_port() -> int:
    """A port free along with its cluster bus port (+10000)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def until(check: Callable[[], object], what: str, timeout: float = 30) -> None:
    """Poll ``check`` (Redis errors count as "not yet") until it is true; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.1)


def start(folder: Path, ports: list[int], masters: int = 3) -> None:
    """Start ``masters`` nodes on free ports and join them; each port is appended to ``ports`` as its
    node starts, so the caller can ``stop(ports)`` whatever started, even after a failure."""
    for _ in range(masters):
        port = free_port()
        subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                        "--cluster-config-file", f"nodes-{port}.conf", "--save", "", "--appendonly", "no",
                        "--daemonize", "yes", "--dir", str(folder), "--logfile", str(folder / f"{port}.log")],
                       check=True)
        ports.append(port)
    for port in ports:
        until(lambda p=port: redis.Redis(port=p).ping(), f"node {port} answers")
    subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                    "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
    for port in ports:
        until(lambda p=port: redis.Redis(port=p, decode_responses=True).execute_command("CLUSTER INFO")
              .get("cluster_state") == "ok",
              f"node {port} sees the cluster ok")


def stop(ports: list[int]) -> None:
    """Shut every node down (no save); a node already gone is fine. No retries: SHUTDOWN closes the
    connection, and redis-py's default retry would reconnect to the stopped node with back-off (about
    4 s a node) before giving up."""
    for port in ports:
        try:
            redis.Redis(port=port, retry=Retry(NoBackoff(), 0)).shutdown(nosave=True)
        except redis.RedisError:
            pass  # shutting down closes the connection


def url(ports: list[int]) -> str:
    """The store URL naming the cluster by its first two nodes (the client discovers the rest)."""
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:2]) + "/"


@contextmanager
def local_cluster(folder: Path, masters: int = 3) -> Iterator[tuple[str, list[int]]]:
    """``with local_cluster(tmp) as (url, ports):`` a running cluster, shut down on exit."""
    ports: list[int] = []
    try:
        start(folder, ports, masters)
        yield url(ports), ports
    finally:
        stop(ports)
