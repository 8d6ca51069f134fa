"""Sessions handed straight to worker processes with room: no Celery message, nothing dropped, nothing stuck."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
import redis
import redis.asyncio as aioredis

from chatq.tasks.job_store import encode_job
from chatq.tasks.keys import Keys, new_job_id
from chatq.tasks.models import Job
from chatq.tasks.session_machine import SessionMachine
from chatq.worker.handoff import Handoff

from .conftest import REDIS_URL


@pytest.fixture
def space():
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = Keys(f"h{uuid.uuid4().hex[:8]}")
    yield r, keys, SessionMachine(r, keys)
    for k in r.scan_iter(f"{keys.ns}:*"):
        r.delete(k)


def submit(machine: SessionMachine, keys: Keys, session_id: str, hand: bool = True) -> str:
    job = Job(job_id=new_job_id(session_id), session_id=session_id, message="hi")
    return machine.submit(job.job_id, session_id, encode_job(job), hand_to=keys if hand else None, queue="q")


def sessions(got: list) -> list[tuple[str, str]]:
    return [(h.namespace, h.session_id) for handed in got for h in handed]


def wait_in_thread(identity: str, keys: Keys, wait_seconds: float, room: int = 1,
                   stop_after: float | None = None) -> tuple[threading.Thread, list]:
    """A worker process's listener: one ``next_sessions`` call on its own event loop, in a thread."""
    got: list = []

    async def main() -> None:
        r = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        handoff = Handoff(r, keys, identity, "q", wait_seconds)
        waiting = asyncio.ensure_future(handoff.next_sessions(room))
        if stop_after is not None:
            await asyncio.sleep(stop_after)
            await handoff.stop()
        got.append(await waiting)
        await r.aclose()

    t = threading.Thread(target=asyncio.run, args=(main(),))
    t.start()
    return t, got


def registered(r: redis.Redis, keys: Keys, count: int = 1, queue: str = "q") -> None:
    deadline = time.monotonic() + 5
    while r.zcard(keys.idle(queue)) < count:
        assert time.monotonic() < deadline, "the waiter never registered"
        time.sleep(0.01)
    time.sleep(0.05)  # registered is not yet blocked: let the BLPOP start


def test_an_idle_session_goes_to_a_waiting_process_and_the_next_one_to_celery(space):
    r, keys, queue = space
    t, got = wait_in_thread("host:1", keys, 0.3)
    registered(r, keys)
    assert submit(queue, keys, "s1") == "handed"
    t.join(5)
    assert sessions(got) == [(keys.ns, "s1")]
    assert got[0][0].job_id == r.lindex(keys.fifo("s1"), 0), "the handed item names the head to take"
    assert r.llen(keys.handed("q")) == 0
    time.sleep(1.5)  # the listener did not come back: its registration lapses (wait + handoff.GRACE)
    assert submit(queue, keys, "s2") == "created", "no one waits any more: publish a wake-up"
    assert submit(queue, keys, "s2") == "queued-behind"
    assert submit(queue, keys, "s3", hand=False) == "created"


def test_a_process_is_handed_up_to_its_room_in_one_round_trip(space):
    r, keys, queue = space
    t, got = wait_in_thread("host:1", keys, 0.5, room=3)
    registered(r, keys)
    assert r.zrange(keys.idle("q"), 0, -1) == ["host:1#3"], "one registration, with its room"
    t.join(5)
    assert got == [[]]
    assert r.zrange(keys.idle("q"), 0, -1) == ["host:1#3"], "still live between round trips"
    assert [submit(queue, keys, f"s{n}") for n in range(4)] == ["handed"] * 3 + ["created"]
    t, got = wait_in_thread("host:1", keys, 0.5, room=3)
    t.join(5)
    assert sorted(sid for _, sid in sessions(got)) == ["s0", "s1", "s2"], "BLPOP's one and the rest, at once"
    assert r.llen(keys.handed("q")) == 0


def test_a_waiter_that_timed_out_is_never_handed_anything(space):
    r, keys, queue = space
    t, got = wait_in_thread("host:1", keys, 0.2)
    t.join(5)
    assert got == [[]]
    time.sleep(1.2)  # the registration outlives its wait by the grace (handoff.GRACE)
    assert submit(queue, keys, "s1") == "created"
    # A registration whose deadline passed (its process stalled or died) is not picked either.
    r.delete(keys.idle("q"))
    r.zadd(keys.idle("q"), {"host:2#100": 1})
    assert submit(queue, keys, "s2") == "created"
    assert r.zcard(keys.idle("q")) == 0


def test_a_session_whose_lease_is_held_is_left_to_its_holder(space):
    r, keys, queue = space
    r.set(keys.lease("s1"), "someone", px=5000)
    assert submit(queue, keys, "s1") == "held"


def test_waiting_processes_each_get_sessions_longest_waiting_first(space):
    r, keys, queue = space
    waiters = []
    for n in range(3):
        waiters.append(wait_in_thread(f"host:{n}", keys, 5))
        registered(r, keys, n + 1)
    assert submit(queue, keys, "a") == "handed"
    waiters[0][0].join(5)
    assert sessions(waiters[0][1]) == [(keys.ns, "a")], "Redis serves the longest-blocked process first"
    assert submit(queue, keys, "b") == "handed"
    assert submit(queue, keys, "c") == "handed"
    for t, _ in waiters:
        t.join(5)
    assert sorted(sid for _, got in waiters for _, sid in sessions(got)) == ["a", "b", "c"]
    assert r.llen(keys.handed("q")) == 0


def test_a_full_process_deregisters_and_producers_go_to_celery(space):
    async def main() -> None:
        ar = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        handoff = Handoff(ar, keys, "host:1", "q", 0.1)
        assert await handoff.next_sessions(2) == []
        assert r.zrange(keys.idle("q"), 0, -1) == ["host:1#2"]
        await handoff.pause()
        await ar.aclose()

    r, keys, queue = space
    asyncio.run(main())
    assert r.zcard(keys.idle("q")) == 0
    assert submit(queue, keys, "s1") == "created"


def test_warm_shutdown_wakes_the_listener_at_once(space):
    r, keys, _ = space
    started = time.monotonic()
    t, got = wait_in_thread("host:1", keys, 30, room=4, stop_after=0.3)
    t.join(5)
    assert got == [[]] and time.monotonic() - started < 5
    assert r.zcard(keys.idle("q")) == 0


def with_waiting_worker(make_fleet, idle_wait: str):
    """A one-worker fleet whose worker waits for hand-offs (after a first job)."""
    fleet = make_fleet(idle_wait=idle_wait)
    worker = fleet.start_worker(4)
    client = fleet.client()
    assert client.chat("warm up", timeout=30).status == "succeeded"
    registered(client.r, client.keys, queue=fleet.settings.queue)
    return fleet, worker, client


def test_fleet_serves_a_new_session_with_its_celery_consumer_cancelled(make_fleet):
    fleet, worker, client = with_waiting_worker(make_fleet, "20")
    fleet.pause_consuming()
    broker = redis.Redis.from_url(fleet.settings.broker)
    job = client.submit("hello, nobody is consuming wake-ups")
    done = client.wait(job.job_id, 30)
    assert done.status == "succeeded", fleet.logs()
    assert done.worker.endswith(f":{worker.pid}")
    assert broker.llen(fleet.settings.queue) == 0, "no Celery message was published for it"


def test_session_handed_to_a_killed_worker_is_taken_by_the_next_one(make_fleet):
    fleet, doomed, client = with_waiting_worker(make_fleet, "60")
    fleet.kill(doomed)  # its waiter stays registered until its deadline
    job = client.submit("handed to the dead")
    handed = client.r.lrange(client.keys.handed(fleet.settings.queue), 0, -1)
    assert handed == [f"{client.namespace} {job.session_id} {job.job_id}"], "nobody alive was waiting for it"
    fleet.start_worker(4)
    done = client.wait(job.job_id, 30)
    assert done.status == "succeeded", fleet.logs()
