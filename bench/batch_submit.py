"""How long submitting a batch of N one-turn conversations takes, by phase; no worker needed.

Compares three ways of publishing the wake-ups: ``ChatClient.wake`` per conversation (on a Redis
broker one LPUSH each), Celery's ``send_task`` through one reused producer, and what
``BatchClient.wake_all`` does (``WakePublisher.wake_many``: on a Redis broker one LPUSH per 2,000
wake-ups; otherwise one producer plus kombu's ``Producer.batch`` and precomputed reprs). Uses a throwaway namespace and queue, removed afterwards.

    python bench/batch_submit.py [--n 10000] [--repeat 3] [--redis redis://127.0.0.1:6379/13]

Variants run interleaved and repeated; best and median are printed, since a shared machine's
load swings single runs by 2x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager

import chatq.tasks.batch as batch_mod
from chatq.tasks.batch import BatchClient, BatchStore
from chatq.tasks.celery_app import RUN_SESSION
from chatq.tasks.client import ChatClient
from chatq.tasks.settings import Settings

timings: dict[str, float] = defaultdict(float)


def timed(name: str, fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[name] += time.perf_counter() - start
    return wrapper


@contextmanager
def patched(obj, name: str, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def wake_each(self: BatchClient, sessions: list[tuple[str, str]]) -> None:
    for session_id, job_id in sessions:
        self.client.wake(session_id, job_id)


def wake_one_producer(self: BatchClient, sessions: list[tuple[str, str]]) -> None:
    app, ns = self.client.app, self.client.namespace
    with app.producer_or_acquire() as producer:
        for session_id, job_id in sessions:
            app.send_task(RUN_SESSION, args=[session_id], kwargs={"job_id": job_id, "namespace": ns},
                          queue=self.client.settings.queue, producer=producer)


VARIANTS = {
    "ChatClient.wake per conversation": wake_each,
    "send_task, one producer": wake_one_producer,
    "BatchClient.wake_all": BatchClient.wake_all,
}


def run(bc: BatchClient, lines: list[str], wake) -> dict[str, float]:
    timings.clear()
    with patched(batch_mod, "plan", timed("validate", batch_mod.plan)), \
            patched(BatchStore, "write", timed("redis writes", BatchStore.write)), \
            patched(BatchClient, "wake_all", timed("wake-ups", wake)):
        start = time.perf_counter()
        info = bc.submit(lines)
        timings["total"] = time.perf_counter() - start
    assert info.total == len(lines)
    return dict(timings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    args = ap.parse_args()
    tag = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=args.redis, namespace=tag, queue=tag)
    client = ChatClient(settings=settings)
    bc = BatchClient(client)
    lines = [json.dumps({"custom_id": f"c{i}", "message": f"conversation {i}: hello"}) for i in range(args.n)]
    runs: dict[str, list[dict[str, float]]] = defaultdict(list)
    try:
        bc.submit(lines[:10])  # warm up: scripts loaded, broker connected
        for _ in range(args.repeat):
            for label, wake in VARIANTS.items():
                runs[label].append(run(bc, lines, wake))
                client.r.delete(tag)  # the broker queue holding the wake-ups
        info = bc.submit(lines)
        reads = {}
        for name, op in (("status", bc.status), ("results", bc.results)):
            start = time.perf_counter()
            op(info.batch_id)
            reads[name] = time.perf_counter() - start
        for label, results in runs.items():
            best = min(results, key=lambda t: t["total"])
            median = statistics.median(t["total"] for t in results)
            phases = ", ".join(f"{k} {v:.2f}s" for k, v in best.items() if k != "total")
            print(f"{args.n} conversations, wake-ups via {label}: best {best['total']:.2f}s "
                  f"({args.n / best['total']:,.0f}/s; {phases}), median {median:.2f}s")
        print(f"reading it back: status {reads['status']:.2f}s, results {reads['results']:.2f}s; batch record "
              f"{client.r.memory_usage(bc.store.conversations_key(info.batch_id)) / 1024:,.0f} KiB")
    finally:
        keys = list(client.r.scan_iter(f"{tag}:*", count=5000))
        for i in range(0, len(keys), 5000):
            client.r.delete(*keys[i:i + 5000])
        client.r.delete(tag, f"_kombu.binding.{tag}", f"_kombu.binding_permanent.{tag}")

if __name__ == "__main__":
    main()
