"""What ``ChatClient.submit`` costs the submitting thread: to a new session (which needs a
wake-up) against one that already has a job queued (which does not). No worker runs, so no
runner thread waits for a hand-off and every new session's wake-up is a Celery message.

Rounds alternate: ``--batch`` submissions to new sessions, then one more to each of those
sessions, so both kinds see the same machine load. CPU is the submitting thread's own
(``time.thread_time``); Redis commands (store and broker together) are counted on a private
redis-server (store in DB 0, the broker in the same DB as chatq's default has it, or in DB 1 with
``--broker-apart``) unless ``--redis`` names another.

    python -m bench.submit_cost [--n 3000] [--batch 100] [--broker-apart] [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import statistics
import time
import uuid
from contextlib import nullcontext

from chatq.tasks.client import ChatClient
from chatq.tasks.settings import Settings

from .private_redis import command_calls, private_redis


def with_db(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def measure(url: str, n: int, batch: int, profile: str | None, broker_db: int = 0) -> None:
    tag = f"bench{uuid.uuid4().hex[:8]}"
    broker = with_db(url, broker_db)
    client = ChatClient(settings=Settings(redis_url=with_db(url, 0), broker_url=broker, namespace=tag, queue=tag))
    try:
        for i in range(20):  # warm up: scripts loaded, broker connected, code paths imported
            client.submit("warm-up", f"warm{i}")
            client.submit("warm-up", f"warm{i}")
        cpu: dict[str, list[float]] = {"new": [], "existing": []}
        wall: dict[str, list[float]] = {"new": [], "existing": []}
        calls: dict[str, dict[str, int]] = {}
        profiler = cProfile.Profile() if profile else None
        for start in range(0, n, batch):
            sessions = [f"s{i}" for i in range(start, min(n, start + batch))]
            for kind in ("new", "existing"):
                client.r.config_resetstat()
                for sid in sessions:
                    t0, c0 = time.perf_counter(), time.thread_time()
                    if profiler and kind == "new":
                        profiler.enable()
                    client.submit(f"hello from {sid}", sid)
                    if profiler and kind == "new":
                        profiler.disable()
                    cpu[kind].append(time.thread_time() - c0)
                    wall[kind].append(time.perf_counter() - t0)
                seen = {k: v for k, v in command_calls(client.r).items() if k not in ("config|resetstat", "info")}
                total = calls.setdefault(kind, {})
                for k, v in seen.items():
                    total[k] = total.get(k, 0) + v
        if profiler:
            profiler.dump_stats(profile)
        ms = {k: [1000 * x for x in v] for k, v in cpu.items()}
        for kind in ("new", "existing"):
            per = {k: v / len(ms[kind]) for k, v in sorted(calls[kind].items())}
            print(f"submit to {kind:8} session: CPU ms p50 {statistics.median(ms[kind]):.3f}, "
                  f"mean {statistics.fmean(ms[kind]):.3f}; wall ms p50 {1000 * statistics.median(wall[kind]):.3f}; "
                  f"commands per submit: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
        ratio = statistics.median(ms["new"]) / statistics.median(ms["existing"])
        mean_ratio = statistics.fmean(ms["new"]) / statistics.fmean(ms["existing"])
        print(f"new / existing: {ratio:.2f}x (p50 CPU), {mean_ratio:.2f}x (mean CPU); {n} each")
    finally:
        keys = list(client.r.scan_iter(f"{tag}:*", count=5000))
        for i in range(0, len(keys), 5000):
            client.r.delete(*keys[i:i + 5000])
        client.r.from_url(broker).delete(tag, f"_kombu.binding.{tag}", f"_kombu.binding_permanent.{tag}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="submissions of each kind")
    ap.add_argument("--batch", type=int, default=100, help="sessions per round")
    ap.add_argument("--profile", help="write a cProfile of the new-session submissions here")
    ap.add_argument("--broker-apart", action="store_true", help="the broker in DB 1, not the store's DB 0")
    ap.add_argument("--redis", help="an existing Redis (DB 0 store) instead of a private one")
    args = ap.parse_args()
    with (nullcontext(args.redis) if args.redis else private_redis()) as url:
        measure(url, args.n, args.batch, args.profile, 1 if args.broker_apart else 0)


if __name__ == "__main__":
    main()
