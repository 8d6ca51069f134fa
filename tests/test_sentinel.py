"""The store and the broker on a Redis watched by Sentinel, through a real failover.

One set-up for the module, started with ``redis-server`` on free local ports in a temp dir: a master
(AOF, fsync always), one replica, three sentinels (quorum 2, down after 1 s). The failover test kills
the master with SIGKILL while two ``chatq worker`` processes work through a load, waits for the
sentinels to promote the replica, and checks that every job finishes exactly as on one Redis. Every
process is stopped by its PID at the end; skipped only when ``redis-server`` is missing.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from kombu import Connection

from chatq.tasks.broker_transport import transport_for
from chatq.tasks.celery_app import make_app
from chatq.tasks.models import JobStatus
from chatq.tasks.redis_pool import (RedisUnusable, celery_broker, get_redis, redact, sentinel_parts,
                                    sentinel_url_of_celery_broker, wait_for_redis)
from chatq.tasks.settings import Settings
from chatq.tasks.wakeups import redis_broker
from chatq.testing.cluster import until

from .conftest import Fleet
from .test_core import expected_history, history_pairs

MASTER = "chatqm"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sentinels:
    """A master, its replica and three sentinels, each a process of ours."""

    folder: Path
    master_port: int = 0
    replica_port: int = 0
    sentinel_ports: list[int] = field(default_factory=list)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def url(self, db: int = 0) -> str:
        return f"redis+sentinel://{','.join(f'127.0.0.1:{p}' for p in self.sentinel_ports)}/{MASTER}/{db}"

    def _server(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "w")
        proc = subprocess.Popen(["redis-server", *args], cwd=self.folder, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.master_port, self.replica_port = _free_port(), _free_port()
        common = ["--bind", "127.0.0.1", "--save", "", "--dir", str(self.folder)]
        self._server("master", "--port", str(self.master_port), *common, "--appendonly", "yes",
                     "--appendfsync", "always", "--appendfilename", "master.aof", "--appenddirname", "master-aof")
        self._server("replica", "--port", str(self.replica_port), *common, "--appendonly", "yes",
                     "--appendfsync", "always", "--appendfilename", "replica.aof", "--appenddirname", "replica-aof",
                     "--replicaof", "127.0.0.1", str(self.master_port))
        for i in range(3):
            port = _free_port()
            conf = self.folder / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.folder}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
                f"sentinel parallel-syncs {MASTER} 1\n")
            self._server(f"sentinel-{i}", str(conf), "--sentinel")
            self.sentinel_ports.append(port)
        until(lambda: redis.Redis(port=self.replica_port, decode_responses=True).info("replication")
               .get("master_link_status") == "up", "the replica syncs with the master")
        for port in self.sentinel_ports:
            until(lambda p=port: self._sees_everyone(p), f"sentinel {port} sees the replica and the other sentinels")

    def _sees_everyone(self, port: int) -> bool:
        s = redis.Redis(port=port, decode_responses=True)
        master = s.sentinel_master(MASTER)
        replicas = s.sentinel_slaves(MASTER)
        return (int(master["num-other-sentinels"]) == 2
                and any(int(r["port"]) == self.replica_port and not r["is_sdown"] for r in replicas))

    def master_address(self) -> tuple[str, int]:
        host, port = redis.Redis(port=self.sentinel_ports[0], decode_responses=True) \
            .sentinel_get_master_addr_by_name(MASTER)
        return host, int(port)

    def kill_master(self) -> None:
        self.procs["master"].send_signal(signal.SIGKILL)
        self.procs["master"].wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait(10)


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory) -> Iterator[Sentinels]:
    if shutil.which("redis-server") is None:
        pytest.skip("the Sentinel tests start a master, a replica and three sentinels and need redis-server "
                    "(apt-get install redis-server)")
    s = Sentinels(tmp_path_factory.mktemp("sentinel"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


def test_a_sentinel_url_is_parsed_and_mapped_for_celery():
    url = "redis+sentinel://:p%40ss@10.0.0.1:26379,[::1]:26380/mymaster/3?sentinel_password=sp"
    parts = sentinel_parts(url)
    assert parts.sentinels == [("10.0.0.1", 26379), ("::1", 26380)] and parts.master == "mymaster"
    assert parts.db == 3 and parts.password == "p@ss" and parts.sentinel_password == "sp"
    broker, options = celery_broker(url)
    assert broker == "sentinel://:p%40ss@10.0.0.1:26379/3;sentinel://[::1]:26380/3"
    assert options == {"master_name": "mymaster", "sentinel_kwargs": {"username": None, "password": "sp"}}
    assert sentinel_url_of_celery_broker(broker, options) == url
    assert "p%40ss" not in redact(url) and "sp" not in redact(url).partition("?")[2]
    app = make_app(Settings(redis_url="redis://127.0.0.1:6379/0", broker_url=url))
    assert app.conf.broker_url == broker and app.conf.broker_transport_options["master_name"] == "mymaster"
    assert app.conf.broker_transport == transport_for(broker) == "chatq.tasks.broker_transport:SentinelTransport"
    assert redis_broker(app) == url  # wake-ups are pushed through a sentinel client
    assert sentinel_parts("redis+sentinel://h:1/m").db == 0
    for bad in ("redis+sentinel://h:1/", "redis+sentinel:///m", "redis+sentinel://h/m", "redis+sentinel://h:1/m/x",
                "redis+sentinel://h:1/m?ssl=1"):
        with pytest.raises(ValueError):
            sentinel_parts(bad)
        with pytest.raises(RedisUnusable):
            wait_for_redis(bad, timeout=1)


def test_the_store_client_and_its_scripts_and_pubsub_reach_the_master(sentinels):
    url = sentinels.url(2)
    assert wait_for_redis(url, timeout=10) >= 0
    r = get_redis(url)
    key = f"probe-{uuid.uuid4().hex[:6]}"
    assert r.register_script("return redis.call('SET', KEYS[1], ARGV[1])")(keys=[key], args=["x"]) == "OK"
    direct = redis.Redis(port=sentinels.master_address()[1], db=2, decode_responses=True)
    assert direct.get(key) == "x"
    assert r.connection_pool.connection_kwargs["socket_timeout"] == 5.0
    r.delete(key)


def _detached_channel_pool(sentinels: Sentinels, transport: str) -> redis.Redis:
    """A channel with a message unacked, whose transport Celery's clean-up (``collect()``) detached;
    then what its close does to restore the message: build a new pool (``tests/test_redis_outage.py``
    shows how a dead broker leaves a channel open past ``collect()``)."""
    broker, options = celery_broker(sentinels.url(1))
    conn = Connection(broker, transport=transport, transport_options=options)
    channel = conn.channel()
    redis.Redis(connection_pool=channel._get_pool()).ping()  # a pool built while attached
    conn.collect()
    assert channel.connection is None or channel.connection.client is None
    return redis.Redis(connection_pool=channel._get_pool())


def test_a_detached_sentinel_channel_still_reaches_the_master(sentinels):
    """Stock kombu's sentinel channel cannot build a pool once detached (``AttributeError``, which
    stops a Celery worker); chatq's keeps the sentinels and parameters and reaches the master."""
    with pytest.raises(AttributeError):
        _detached_channel_pool(sentinels, "sentinel")
    r = _detached_channel_pool(sentinels, "chatq.tasks.broker_transport:SentinelTransport")
    assert r.ping() and r.connection_pool.get_master_address()[1] == sentinels.master_address()[1]


def test_a_failover_mid_load_loses_no_job_and_no_turn(tmp_path, fake_openai, sentinels):
    """The master is killed (SIGKILL) while two workers run 40 sessions x 3 turns, store and broker
    both on the sentinel-watched master; the replica is promoted and the fleet carries on. The second
    turn runs long (1.5 s), so the kill lands with jobs running and jobs queued (checked just before
    it): both must come through."""
    fleet = Fleet(tmp_path, fake_openai.base_url, redis_url=sentinels.url(0), broker_url=sentinels.url(1))
    try:
        for proc in (fleet.start_worker(20), fleet.start_worker(20)):
            fleet.wait_ready(proc)
        client = fleet.client()
        sessions = [f"fo-{uuid.uuid4().hex[:8]}" for _ in range(40)]
        texts = {s: [f"{s} turn {i} [[stall:{1.5 if i == 1 else 0.2}]]" for i in range(3)] for s in sessions}
        jobs = {s: [client.submit(texts[s][i], s).job_id for i in range(2)] for s in sessions}
        all_jobs = [j for s in sessions for j in jobs[s]]
        until(lambda: sum(j.status == "succeeded" for j in client.jobs.get_many(all_jobs)) >= 15,
               "some of the load is done before the kill", timeout=60)
        old = sentinels.master_address()
        in_flight = {j.job_id: j.status for j in client.jobs.get_many(all_jobs) if not j.status.finished}
        sentinels.kill_master()
        assert in_flight, "the kill should land mid-load: every job had finished"
        assert JobStatus.running in in_flight.values(), f"the kill should land mid-job: {in_flight}"
        until(lambda: sentinels.master_address() != old, "the sentinels promote the replica", timeout=60)
        assert sentinels.master_address()[1] == sentinels.replica_port
        # The fleet goes on: a third turn for every session, submitted to the new master.
        for s in sessions:
            jobs[s].append(client.submit(texts[s][2], s).job_id)
        all_jobs = [j for s in sessions for j in jobs[s]]
        deadline = time.monotonic() + 120
        while True:
            found = client.jobs.get_many(all_jobs)
            if all(j is not None and j.status in ("succeeded", "failed", "cancelled") for j in found):
                break
            if time.monotonic() > deadline:
                stuck = {jid: (j.status if j else "missing") for jid, j in zip(all_jobs, found)
                         if j is None or j.status not in ("succeeded", "failed", "cancelled")}
                pytest.fail(f"{len(stuck)} jobs unfinished after the failover: {stuck}\n{fleet.logs()}")
            time.sleep(0.5)
        assert all(j.status == "succeeded" for j in found), \
            {j.job_id: (j.status, j.error) for j in found if j.status != "succeeded"}
        wrong = {s: history_pairs(client, s) for s in sessions if history_pairs(client, s) != expected_history(texts[s])}
        assert not wrong, f"histories not complete and in order after the failover: {wrong}"
        retried = [j.job_id for j in found if j.attempts > 1]
        running = sum(status == JobStatus.running for status in in_flight.values())
        print(f"failover: {len(all_jobs)} jobs succeeded; at the kill {running} running and "
              f"{len(in_flight) - running} queued; {len(retried)} run again after the failover")
    finally:
        fleet.stop()
