"""What the sweeper costs while a backlog waits: wake-ups published and CPU spent; no worker needed.

N sessions get one job each and no lease, as in a backlog whose Celery wake-ups still wait in the
broker behind busy workers. A real ``Sweeper`` sweeps them every ``--interval`` (real time, so
``--seconds / --interval`` sweeps: 120 is ten minutes at the default 5 s interval), publishing
real wake-ups to a throwaway queue. Prints the wake-ups published, per session, and the process's
CPU: publishing them, and the rest of the sweeps. Throwaway namespace and queue, removed afterwards.

    python bench/sweep_backlog.py [--sessions 3000] [--interval 0.25] [--seconds 30]
"""

from __future__ import annotations

import argparse
import time
import uuid

import redis

from chatq.tasks.job_store import encode_job
from chatq.tasks.keys import Keys, new_job_id
from chatq.tasks.models import Job
from chatq.tasks.session_machine import SessionMachine
from chatq.tasks.session_store import SessionStore
from chatq.tasks.settings import Settings
from chatq.tasks.wakeups import WakePublisher
from chatq.worker.sweeper import Sweeper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=3000)
    ap.add_argument("--interval", type=float, default=0.25)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    args = ap.parse_args()
    tag = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(redis_url=args.redis, broker_url=args.redis, namespace=tag, queue=tag)
    r = redis.Redis.from_url(args.redis, decode_responses=True)
    keys = Keys(tag)
    machine, store = SessionMachine(r, keys), SessionStore(r, keys)
    publisher = WakePublisher.shared(settings)
    try:
        pipe = r.pipeline(transaction=False)
        for i in range(args.sessions):
            sid = f"s{i}"
            job = Job(job_id=new_job_id(sid), session_id=sid, message="hello")
            machine.submit(job.job_id, sid, encode_job(job), client=pipe)
            if len(pipe) >= 2000:
                pipe.execute()
        pipe.execute()
        publishing = [0.0]

        def wake(session_id: str, namespace: str) -> None:
            started = time.process_time()
            publisher.wake(session_id, namespace)
            publishing[0] += time.process_time() - started

        sweeper = Sweeper(r, keys, lambda: [(machine, store)], wake, args.interval)
        cpu, start = time.process_time(), time.monotonic()
        sweeps = 0
        while time.monotonic() < start + args.seconds:
            sweeper.sweep_once()
            sweeps += 1
            time.sleep(max(0.0, start + sweeps * args.interval - time.monotonic()))
        cpu = time.process_time() - cpu
        woken = r.llen(tag)
        print(f"{args.sessions} backlogged sessions, {sweeps} sweeps {args.interval} s apart: {woken} wake-ups "
              f"({woken / args.sessions:.2f} per session); CPU {cpu:.2f} s, of which publishing them "
              f"{publishing[0]:.2f} s; the rest {(cpu - publishing[0]) / sweeps * 1000:.1f} ms a sweep")
    finally:
        found = list(r.scan_iter(f"{tag}:*", count=5000))
        for i in range(0, len(found), 5000):
            r.delete(*found[i:i + 5000])
        r.delete(tag, f"_kombu.binding.{tag}", f"_kombu.binding_permanent.{tag}")


if __name__ == "__main__":
    main()
