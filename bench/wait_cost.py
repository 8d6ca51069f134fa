"""What ``ChatClient.wait`` costs the waiting process: CPU and job-record reads while N threads
wait on unfinished jobs, then when all their jobs finish at once. No worker needed.

The jobs are submitted to N new sessions and finished the way the commit script does it (status,
then ``PUBLISH`` on the job's done channel), all in one script call whose client-side CPU is
subtracted. Runs on a private redis-server, so ``INFO commandstats`` counts this process's reads.

    python -m bench.wait_cost [--waiters 3000] [--idle 90] [--redis URL]

A wait that costs nothing while idle shows ~0 reads and ~0 CPU per waiter-minute, and ~1 read per
job when the jobs finish.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from contextlib import nullcontext

from chatq.tasks.client import ChatClient
from chatq.tasks.models import utcnow
from chatq.tasks.settings import Settings

from .private_redis import command_calls, private_redis

FINISH = """
for i, key in ipairs(KEYS) do
  redis.call('HSET', key, 'status', 'succeeded', 'finished_at', ARGV[1])
  redis.call('PUBLISH', ARGV[i + 1], 'succeeded')
end
return #KEYS
"""


def measure(url: str, waiters: int, idle: float, settle: float) -> None:
    tag = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=url, namespace=tag, queue=tag,
                        redis_max_connections=waiters + 32)
    client = ChatClient(settings=settings)
    try:
        run(client, waiters, idle, settle)
    finally:
        cleanup(client, tag)


def cleanup(client: ChatClient, tag: str) -> None:
    """Remove the run's keys and its wake-ups' Celery queue (needed with ``--redis``)."""
    keys = list(client.r.scan_iter(f"{tag}:*", count=5000))
    for i in range(0, len(keys), 5000):
        client.r.delete(*keys[i:i + 5000])
    client.r.delete(tag, f"_kombu.binding.{tag}", f"_kombu.binding_permanent.{tag}")


def run(client: ChatClient, waiters: int, idle: float, settle: float) -> None:
    jobs = [client.submit(f"hello {i}", f"s{i}").job_id for i in range(waiters)]
    started = threading.Barrier(waiters + 1)
    errors: list[BaseException] = []
    finished_at: list[float] = []
    lock = threading.Lock()

    def waiter(job_id: str) -> None:
        started.wait()
        try:
            job = client.wait(job_id)
            assert job.status == "succeeded", job.status
        except BaseException as exc:  # reported below
            errors.append(exc)
        with lock:
            finished_at.append(time.monotonic())

    client.r.config_resetstat()
    threads = [threading.Thread(target=waiter, args=(j,), daemon=True) for j in jobs]
    for t in threads:
        t.start()
    started.wait()
    setup = time.monotonic()
    while command_calls(client.r).get("hgetall", 0) < waiters:  # every waiter's first read
        time.sleep(0.2)
    print(f"{waiters} waiters started and read their job once in {time.monotonic() - setup:.1f} s")
    time.sleep(settle)

    client.r.config_resetstat()
    cpu, wall = time.process_time(), time.monotonic()
    time.sleep(idle)
    idle_cpu, idle_wall = time.process_time() - cpu, time.monotonic() - wall
    idle_calls = command_calls(client.r)
    idle_reads, idle_checks = idle_calls.get("hgetall", 0), idle_calls.get("hget", 0)

    client.r.config_resetstat()
    finish = client.r.register_script(FINISH)
    keys = [client.keys.job(j) for j in jobs]
    channels = [client.keys.done_channel(j) for j in jobs]
    cpu, wall = time.process_time(), time.monotonic()
    own = time.thread_time()
    finish(keys=keys, args=[utcnow().isoformat(), *channels])
    own = time.thread_time() - own
    for t in threads:
        t.join(60)
    done_cpu = time.process_time() - cpu - own
    done_wall = max(finished_at) - wall if finished_at else float("nan")
    done_reads = command_calls(client.r).get("hgetall", 0)
    if errors or len(finished_at) != waiters:
        raise SystemExit(f"{len(errors)} waits failed ({errors[:3]}), {waiters - len(finished_at)} still waiting")

    minutes = idle_wall / 60
    per_wait_min = 1000 * idle_cpu / waiters / minutes
    print(f"{waiters} threads in ChatClient.wait, {idle_wall:.0f} s idle: "
          f"{1000 * idle_cpu:.0f} ms CPU ({per_wait_min:.3f} ms per waiter-minute), "
          f"{idle_reads} job-record reads ({idle_reads / waiters / minutes:.2f} per waiter-minute), "
          f"{idle_checks} status reads ({idle_checks / waiters / minutes:.2f} per waiter-minute)")
    print(f"all {waiters} jobs finished at once: {1000 * done_cpu / waiters:.3f} ms CPU per job, "
          f"{done_reads / waiters:.2f} reads per job, last waiter returned after {done_wall:.2f} s")
    for latency in (1, 5, 30):
        print(f"  a job waited on for {latency:>2} s costs the waiting client ~"
              f"{per_wait_min * latency / 60 + 1000 * done_cpu / waiters:.3f} ms CPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--waiters", type=int, default=3000)
    ap.add_argument("--idle", type=float, default=90.0, help="seconds the waiters wait, measured")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds to let the start-up settle after every waiter's first read")
    ap.add_argument("--redis", help="an existing Redis to use (default: a private redis-server; the read "
                                    "counts then include everyone else's)")
    args = ap.parse_args()
    with (nullcontext(args.redis) if args.redis else private_redis()) as url:
        measure(url, args.waiters, args.idle, args.settle)


if __name__ == "__main__":
    main()
