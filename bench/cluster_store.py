"""chatq's store on a local 3-master Redis Cluster for ``bench/run.py --store cluster`` (issue 15).

The cluster is started and stopped with the tests' own helper (``chatq.testing.cluster``), so the
benchmark measures the same set-up tests/test_cluster.py checks. One machine cannot show a cluster
scaling (its three nodes share the same cores as everything else): the figures say what routing by
slot costs, and ``spread`` shows how the keys land over slots and nodes, the ``{ns}`` slot (the
fleet's shared structures) being the one to watch.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.crc import key_slot

from chatq.tasks.redis_pool import cluster_nodes, is_cluster_url
from chatq.testing import cluster as local

from . import proc_stats

__all__ = ["ClusterStore", "client", "describe", "is_cluster_url", "masters", "started"]


def client(url: str) -> redis.RedisCluster:
    """A plain (bytes) cluster client, as the benchmark's own ``redis.Redis`` clients are."""
    _, nodes = cluster_nodes(url)
    return redis.RedisCluster(host=nodes[0][0], port=nodes[0][1])


def masters(r: redis.RedisCluster) -> list[redis.Redis]:
    """A client of each master (for per-node INFO)."""
    return [r.get_redis_connection(node) for node in r.get_primaries()]


class ClusterStore:
    """A running local cluster: its URL, its nodes, and what each node did during the run."""

    def __init__(self, ports: list[int]):
        self.ports = ports
        self.url = local.url(ports)
        self.nodes = {p: redis.Redis(port=p, decode_responses=True) for p in ports}
        self._start: dict[int, tuple[int, float]] = {}

    def pids(self) -> list[int]:
        return [int(n.info("server")["process_id"]) for n in self.nodes.values()]

    def _now(self) -> dict[int, tuple[int, float]]:
        return {p: (int(n.info("stats")["total_commands_processed"]), proc_stats.cpu(int(n.info("server")["process_id"])))
                for p, n in self.nodes.items()}

    def mark(self) -> None:
        """Commands and CPU of each node from here on (``spread``)."""
        self._start = self._now()

    def spread(self, namespace: str) -> dict:
        """How the namespace's keys lie over slots and nodes now, and each node's commands and CPU
        since ``mark``: per node its slot ranges, DBSIZE, the namespace's keys and the slots they
        use; the busiest slots; the ``{ns}`` slot's key count (CLUSTER COUNTKEYSINSLOT)."""
        end = self._now()
        per_slot: Counter[int] = Counter()
        kinds: Counter[str] = Counter()
        nodes = []
        fleet_slot = key_slot(f"{namespace}:{{{namespace}}}:x".encode())
        owner = None
        for port, n in self.nodes.items():
            ranges = _own_ranges(n, port)
            if any(a <= fleet_slot <= b for a, b in ranges):
                owner = port
            keys = [k for k in n.scan_iter(f"{namespace}:*", count=1000)]
            slots = Counter(key_slot(k.encode()) for k in keys)
            per_slot.update(slots)
            kinds.update(_kind(k) for k in keys)
            c0, cpu0 = self._start.get(port, (0, 0.0))
            c1, cpu1 = end[port]
            nodes.append(dict(port=port, slots=sum(b - a + 1 for a, b in ranges), dbsize=n.dbsize(), keys=len(keys),
                              slots_used=len(slots), commands=c1 - c0, cpu_s=round(cpu1 - cpu0, 2)))
        fleet_keys = self.nodes[owner].execute_command("CLUSTER COUNTKEYSINSLOT", fleet_slot) if owner else -1
        counts = sorted(per_slot.values())
        return dict(namespace=namespace, nodes=nodes, slots_used=len(per_slot), keys=sum(counts), kinds=dict(kinds),
                    keys_per_used_slot=dict(min=counts[0] if counts else 0, median=counts[len(counts) // 2] if counts else 0,
                                            max=counts[-1] if counts else 0),
                    busiest=[dict(slot=s, keys=k, fleet=s == fleet_slot) for s, k in per_slot.most_common(3)],
                    fleet_slot=dict(slot=fleet_slot, node=owner, keys=fleet_keys))


def _kind(key: str) -> str:
    """``ns:{t}:s:<id>:meta`` -> ``s:meta``; ``ns:{ns}:pending`` -> ``{ns}:pending``."""
    parts = key.split(":")
    if len(parts) >= 5 and parts[2] in ("s", "j"):
        return f"{parts[2]}:{parts[-1]}"
    if len(parts) >= 3 and parts[1] == f"{{{parts[0]}}}":
        return "{ns}:" + parts[2]
    return ":".join(parts[1:3]) if len(parts) >= 3 else key


def _own_ranges(n: redis.Redis, port: int) -> list[tuple[int, int]]:
    """The slot ranges this node serves (from its CLUSTER SLOTS)."""
    out = []
    for row in n.execute_command("CLUSTER SLOTS"):
        start, end, master = row[0], row[1], row[2]
        if int(master[1]) == port:
            out.append((int(start), int(end)))
    return out


def describe(spread: dict) -> str:
    """The spread as a few plain lines for the report."""
    lines = [f"  node {n['port']}: {n['slots']} slots, DBSIZE {n['dbsize']}, this run's keys {n['keys']} in "
             f"{n['slots_used']} slots; {n['commands']} commands, {n['cpu_s']:.2f} s CPU during the run"
             + (" (holds the {ns} slot)" if n["port"] == spread["fleet_slot"]["node"] else "")
             for n in spread["nodes"]]
    lines.append("  keys by kind: " + ", ".join(f"{kind} {n}" for kind, n in sorted(spread["kinds"].items(),
                                                                                   key=lambda kv: -kv[1])))
    k = spread["keys_per_used_slot"]
    lines.append(f"  {spread['keys']} keys in {spread['slots_used']} of 16384 slots: per used slot min {k['min']}, "
                 f"median {k['median']}, max {k['max']}")
    f = spread["fleet_slot"]
    lines.append(f"  the {{ns}} slot {f['slot']}: {f['keys']} keys (CLUSTER COUNTKEYSINSLOT); busiest slots: "
                 + ", ".join(f"{b['slot']} ({b['keys']} keys{', {ns}' if b['fleet'] else ''})" for b in spread["busiest"]))
    return "\n".join(lines)


@contextmanager
def started(folder: Path) -> Iterator[ClusterStore]:
    """A 3-master cluster in ``folder`` for the run, shut down on exit whatever happens."""
    absent = local.missing()
    if absent:
        raise SystemExit(f"--store cluster starts a local Redis Cluster and needs {' and '.join(absent)} on PATH")
    t0 = time.monotonic()
    with local.local_cluster(folder) as (_url, ports):
        store = ClusterStore(ports)
        print(f"  cluster up in {time.monotonic() - t0:.1f}s on ports {ports}", flush=True)
        yield store
