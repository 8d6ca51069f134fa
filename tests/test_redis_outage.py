"""Redis restarts and outages: workers and waiters ride them out, and no job is lost or doubled.

Each test runs its own redis-server (AOF on; store in DB 0, broker in DB 1) so it can kill, stop and
restart it without touching the shared one, and its own fleet of real ``chatq worker`` processes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Queue

from chatq.tasks.broker_transport import transport_for
from chatq.tasks.client import ChatClient
from chatq.tasks.job_store import DoneListener
from chatq.tasks.redis_pool import RedisUnusable, wait_for_redis
from chatq.tasks.settings import Settings
from chatq.testing.server import last_user_text

from .conftest import ROOT, Fleet, wait_all
from .test_core import expected_history, history_pairs


def _free_port() -> int:
    for _ in range(100):
        port = int.from_bytes(os.urandom(2), "big") % 40000 + 20000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


class PrivateRedis:
    """A redis-server of this test's own, with AOF on: killed and restarted on the same port and dir."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.stopped = False

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.dir)],
            stdout=open(self.dir / "redis.log", "a"), stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url())
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.stopped = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.stopped = False

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.stopped:
                self.resume()
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.close()


@pytest.fixture
def outage_fleet(tmp_path, fake_openai, private_redis) -> Iterator[Fleet]:
    """A fleet whose store and broker are both on the private Redis (not started yet)."""
    fleet = Fleet(tmp_path / "fleet", fake_openai.base_url,
                  redis_url=private_redis.url(0), broker_url=private_redis.url(1))
    fleet.tmp.mkdir()
    yield fleet
    if private_redis.stopped:
        private_redis.resume()
    for proc in fleet.workers:  # the private Redis goes with the test: no keys to clean up
        if proc.poll() is None:
            fleet.kill(proc)


def _full_logs(fleet: Fleet) -> str:
    return "\n".join(p.read_text() for p in sorted(fleet.tmp.glob("worker-*.log")))


def _chatq(fleet: Fleet, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chatq", *args], cwd=ROOT, env=fleet.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _load(fleet: Fleet, sessions: int = 50, turns: int = 5):
    """sessions x turns jobs, each first call stalled 1 s so that many calls are in flight at once."""
    client = fleet.client()
    names = [f"out-{uuid.uuid4().hex[:8]}" for _ in range(sessions)]
    texts = {s: [f"{s} turn {i} [[stall:1]]" for i in range(turns)] for s in names}
    jobs = [client.submit(texts[s][i], s).job_id for i in range(turns) for s in names]
    return client, texts, jobs


def _succeeded(client, jobs: list[str]) -> int:
    return sum(1 for j in client.jobs.get_many(jobs) if j is not None and j.status == "succeeded")


def _assert_exactly_once(fleet: Fleet, client, texts: dict[str, list[str]], jobs: list[str], waiter) -> None:
    done = wait_all(client, jobs, timeout=60)
    assert all(j.status == "succeeded" for j in done), fleet.logs()
    for s, ts in texts.items():
        assert history_pairs(client, s) == expected_history(ts), s  # complete, in order, no turn twice
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 0, err
    assert json.loads(out)["status"] == "succeeded"
    assert all(w.poll() is None for w in fleet.workers), fleet.logs()


def _assert_every_thread_free(fleet: Fleet, server) -> None:
    """No runner thread is wedged by the outage: 2 workers x 20 threads hold 40 calls in flight again."""
    client = fleet.client()
    server.reset_stats()
    jobs = [client.submit(f"after the outage {uuid.uuid4().hex[:8]} [[stall:3]]").job_id for _ in range(40)]
    done = wait_all(client, jobs, timeout=60)
    assert all(j.status == "succeeded" for j in done), fleet.logs()
    texts = [last_user_text(b) for b in server.recorded("after the outage")]
    twice = sorted(t for t in set(texts) if texts.count(t) > 1)
    assert server.stats["max_in_flight"] == 40, (server.stats, f"asked twice: {twice}", fleet.logs())


def _start(fleet: Fleet, private_redis: PrivateRedis):
    private_redis.start()
    for _ in range(2):
        fleet.start_worker(20)
    client, texts, jobs = _load(fleet)
    waiter = _chatq(fleet, "wait", jobs[-1], "--timeout", "90")
    _wait_until(lambda: _succeeded(client, jobs) >= 40, 60, "the load to get going")
    assert _succeeded(client, jobs) < len(jobs) - 50, "the outage should land in the middle of the load"
    return client, texts, jobs, waiter


def test_redis_killed_and_restarted_with_aof_mid_load_costs_time_not_jobs(outage_fleet, private_redis, fake_openai):
    client, texts, jobs, waiter = _start(outage_fleet, private_redis)
    private_redis.kill()
    time.sleep(3)  # longer than a lease: the sessions' leases expire, other threads take them up
    private_redis.start()
    _assert_exactly_once(outage_fleet, client, texts, jobs, waiter)
    _assert_every_thread_free(outage_fleet, fake_openai)
    logs = _full_logs(outage_fleet)
    assert "Connection to broker lost" in logs
    assert "Unrecoverable error" not in logs and "worker_cancel_long_running_tasks" not in logs


def test_redis_stopped_for_20_s_mid_load_costs_time_not_jobs(outage_fleet, private_redis, fake_openai):
    client, texts, jobs, waiter = _start(outage_fleet, private_redis)
    private_redis.pause()
    time.sleep(20)
    private_redis.resume()
    _assert_exactly_once(outage_fleet, client, texts, jobs, waiter)
    _assert_every_thread_free(outage_fleet, fake_openai)
    assert "Unrecoverable error" not in _full_logs(outage_fleet)


def test_a_worker_started_before_its_redis_waits_for_it(outage_fleet, private_redis):
    worker = outage_fleet.start_worker(4)
    _wait_until(lambda: "waiting for Redis" in _full_logs(outage_fleet), 20, "the worker to say it waits")
    assert worker.poll() is None
    private_redis.start()
    job = outage_fleet.client().chat("hello after the wait", timeout=30)
    assert job.status == "succeeded", outage_fleet.logs()
    logs = _full_logs(outage_fleet)
    assert "Traceback" not in logs
    assert logs.count("waiting for Redis") <= 3  # one line every few seconds, not a flood


def test_a_worker_that_cannot_use_its_redis_exits_non_zero_at_once(outage_fleet, private_redis):
    private_redis.start()
    outage_fleet.env["CHATQ_REDIS_URL"] = private_redis.url(99)  # Redis refuses the database index
    worker = outage_fleet.start_worker(4)
    assert worker.wait(30) == 2
    log = _full_logs(outage_fleet)
    assert "error: worker cannot start" in log and "DB index is out of range" in log and "Traceback" not in log


def test_a_worker_celery_stops_on_an_unrecoverable_error_exits_non_zero(outage_fleet, private_redis, tmp_path):
    """Celery logs "Unrecoverable error" and stops; its exit code must reach the supervisor."""
    private_redis.start()
    agents = tmp_path / "agents.toml"
    agents.write_text('[agents.default]\ntools = ["tests.broken_celery_step:noop"]\n')
    outage_fleet.env["CHATQ_AGENTS_FILE"] = str(agents)
    worker = outage_fleet.start_worker(4)
    assert worker.wait(60) != 0
    assert "Unrecoverable error" in _full_logs(outage_fleet)


def test_wait_through_an_outage_that_outlasts_its_timeout_says_so_in_one_line(outage_fleet, private_redis):
    private_redis.start()
    job = outage_fleet.client().submit("nobody runs this")
    private_redis.kill()
    started = time.monotonic()
    waiter = _chatq(outage_fleet, "wait", job.job_id, "--timeout", "3")
    out, err = waiter.communicate(timeout=60)
    took = time.monotonic() - started
    assert waiter.returncode == 1 and out == ""
    [line] = err.strip().splitlines()
    assert re.match(rf"error: gave up waiting for job {job.job_id} after 3 s: Redis unreachable for \d+ s \(", line)
    assert took >= 3


def test_wait_keeps_waiting_through_an_outage_until_the_job_finishes(outage_fleet, private_redis):
    private_redis.start()
    outage_fleet.start_worker(4)
    client = outage_fleet.client()
    job = client.submit("slow [[stall:2]]")
    _wait_until(lambda: client.get(job.job_id).status == "running", 30, "the job to start")
    waiter = _chatq(outage_fleet, "wait", job.job_id, "--timeout", "60")
    time.sleep(0.5)
    private_redis.kill()
    time.sleep(3)
    private_redis.start()
    out, err = waiter.communicate(timeout=90)
    assert waiter.returncode == 0, err
    assert json.loads(out)["status"] == "succeeded"
    assert client.wait(job.job_id, 1).status == "succeeded"


# The pieces, directly.

def test_a_notification_lost_with_the_listeners_connection_is_made_up_by_its_resubscribe(outage_fleet, private_redis):
    """Redis drops the waiters' shared listener and, in the same transaction, finishes the job and
    announces it to nobody: the listener's resubscribe wakes the waiter to re-read, long before
    its timeout (20 s, under the 30-60 s of its safety re-read)."""
    private_redis.start()
    client = outage_fleet.client()
    job = client.submit("nobody runs this")
    client.r.config_resetstat()
    waited: dict[str, object] = {}
    waiter = threading.Thread(target=lambda: waited.update(job=client.wait(job.job_id, 20)), daemon=True)
    waiter.start()
    _wait_until(lambda: client.r.pubsub_numpat() == 1 and "cmdstat_hgetall" in client.r.info("commandstats"),
                10, "the waiter to read its job and the listener to subscribe")
    time.sleep(0.5)  # the listener's first subscribe has woken the waiter and it waits again
    assert waiter.is_alive()
    finish = client.r.pipeline(transaction=True)
    finish.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    finish.hset(client.keys.job(job.job_id), "status", "cancelled")
    finish.publish(client.keys.done_channel(job.job_id), "cancelled")
    assert finish.execute()[-1] == 0  # the notification reached no one
    waiter.join(10)  # at its timeout it would re-read anyway: it must be woken long before
    assert not waiter.is_alive(), "the resubscribe did not wake the waiter"
    assert waited["job"].status == "cancelled"


def test_the_listener_finds_a_job_that_finished_without_a_notification(outage_fleet, private_redis):
    """The safety net for a notification lost with no reconnect to tell (a silent network drop):
    the listener's periodic check reads the job and hands its waiter the record; a job still
    queued is left waiting."""
    private_redis.start()
    client = outage_fleet.client()
    finished, queued = client.submit("nobody runs this"), client.submit("nor this")
    listener = DoneListener(client.r, client.keys.done_channel("*"), client.keys.job, check_every=0.5)
    finished_waiter, queued_waiter = listener.register(finished.job_id), listener.register(queued.job_id)
    client.r.hset(client.keys.job(finished.job_id), "status", "failed")  # and no PUBLISH
    deadline = time.monotonic() + 10
    fields = None
    while fields is None and time.monotonic() < deadline:  # woken once at the first subscribe, empty
        fields = finished_waiter.wait(deadline - time.monotonic())
    assert fields is not None and fields["status"] == "failed" and fields["message"] == "nobody runs this"
    assert queued_waiter.wait(2) is None  # at most the subscribe's wake-up: nothing read for it


def test_wait_for_redis_logs_one_line_every_few_seconds_and_gives_up_at_its_timeout(caplog):
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    url = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    with caplog.at_level(logging.WARNING, logger="chatq.tasks.redis_pool"):
        with pytest.raises(RedisUnusable, match="unreachable for 12 s"):
            wait_for_redis(url, log_every=5, timeout=12, sleep=sleep, clock=lambda: now[0])
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"waiting for Redis at {url}"] * 3


def test_wait_for_redis_refuses_what_waiting_cannot_fix(private_redis):
    private_redis.start()
    assert wait_for_redis(private_redis.url(0)) < 1
    for url, why in [(private_redis.url(99), "DB index is out of range"),
                     ("amqp://127.0.0.1//", "not a redis"),
                     ("redis://127.0.0.1:port/0", "invalid")]:
        with pytest.raises(RedisUnusable, match=why):
            wait_for_redis(url, timeout=5)
    redis.Redis.from_url(private_redis.url(0)).config_set("requirepass", "sekrit")
    for url in (private_redis.url(0), private_redis.url(0).replace("//", "//:wrong@")):
        with pytest.raises(RedisUnusable, match="refuses this client"):
            wait_for_redis(url, timeout=5)
    assert wait_for_redis(private_redis.url(0).replace("//", "//:sekrit@")) < 1


def test_a_pipelines_scripts_cost_no_extra_round_trip_and_survive_a_flushed_script_cache(private_redis):
    """A submit is one round trip (no ``SCRIPT EXISTS`` before it, ``chatq.tasks.pipelines``), and a
    Redis that lost its scripts (restarted, or ``SCRIPT FLUSH``) gets them loaded and the calls sent
    again: nothing is lost and nothing runs twice."""
    private_redis.start()
    url = private_redis.url(0)
    client = ChatClient(settings=Settings(redis_url=url, namespace="pipe", queue="pipe"))
    r = redis.Redis.from_url(url, decode_responses=True)
    first = client.submit("one", "s1")  # the scripts are not loaded yet: NOSCRIPT, loaded, sent again
    r.config_resetstat()
    second = client.submit("two", "s1")
    stats = r.info("commandstats")
    assert "cmdstat_script|exists" not in stats and "cmdstat_script|load" not in stats, stats
    assert stats["cmdstat_evalsha"]["calls"] == 2  # announce and submit, in the one pipeline
    r.script_flush()
    third = client.submit("three", "s2")
    assert r.lrange(client.keys.fifo("s1"), 0, -1) == [first.job_id, second.job_id]
    assert r.lrange(client.keys.fifo("s2"), 0, -1) == [third.job_id]
    wakes = [json.loads(m)["headers"]["argsrepr"] for m in r.lrange("pipe", 0, -1)]
    assert wakes == ["['s2']", "['s1']"], "each new session woken once, by its submit"
    assert {j.status for j in client.jobs.get_many([first.job_id, second.job_id, third.job_id])} == {"queued"}


def _lose_the_broker_with_a_message_unacked(private_redis: PrivateRedis, transport: str | None):
    """A worker's consumer connection when its Redis dies: the task channel holds an unacked message
    and waits in BRPOP; a later channel consumes an auto-delete fanout queue (Celery's pidbox).
    Then Celery's clean-up: ``collect()``, which detaches the transport, and ``close()``."""
    conn = Connection(private_redis.url(1), transport=transport)
    got = []
    tasks = conn.SimpleQueue(f"q-{uuid.uuid4().hex[:6]}")
    tasks.put({"n": 1})
    conn.Consumer(tasks.queue, callbacks=[lambda body, message: got.append(message)]).consume()
    conn.drain_events(timeout=5)
    with pytest.raises(socket.timeout):
        conn.drain_events(timeout=0.2)  # leaves the BRPOP outstanding
    broadcast = Queue(f"b-{uuid.uuid4().hex[:6]}", Exchange("b", type="fanout"), auto_delete=True)
    conn.Consumer(broadcast, channel=conn.channel(), callbacks=[lambda body, message: None]).consume()
    private_redis.kill()
    conn.collect()
    return conn, got[0]


def test_a_consumer_channel_survives_its_redis_dying_with_a_message_unacked(private_redis):
    """Stock kombu raises ``AttributeError`` on the clean-up and on the late ack (either stops a Celery
    worker). When those assertions fail, the upstream bug is fixed and ``chatq.tasks.broker_transport``
    can go."""
    private_redis.start()
    conn, message = _lose_the_broker_with_a_message_unacked(private_redis, None)
    with pytest.raises(AttributeError, match="hostname"):
        conn.close()
    private_redis.start()
    with pytest.raises(AttributeError, match="hostname"):
        message.ack()

    conn, message = _lose_the_broker_with_a_message_unacked(private_redis, transport_for(private_redis.url(1)))
    conn.close()  # the restore fails with a ConnectionError, which kombu ignores: an outage
    private_redis.start()
    message.ack()  # the task that was running acks late on its old channel, after the restart
    r = redis.Redis.from_url(private_redis.url(1))
    assert r.hget("unacked", message.delivery_tag) is None
    assert r.zscore("unacked_index", message.delivery_tag) is None
