"""Fixtures: real Redis, the project's OpenAI-compatible test server, real `chatq worker` processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kombu import Connection

# Tests never reach a real provider, whatever the developer's shell exports.
for _var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "CHATQ_REDIS_URL", "CHATQ_NAMESPACE"):
    os.environ.pop(_var, None)

from chatq.tasks.celery_app import is_amqp
from chatq.tasks.client import ChatClient
from chatq.tasks.redis_pool import get_redis
from chatq.tasks.settings import Settings
from chatq.testing.server import TestServer

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("CHATQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
BROKER_URL = os.environ.get("CHATQ_TEST_BROKER_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session", autouse=True)
def _redis_up() -> None:
    try:
        redis.Redis.from_url(REDIS_URL).ping()
    except redis.ConnectionError as exc:
        pytest.exit(f"Redis is not answering at {REDIS_URL}: {exc} (run .ci/ensure-redis)", 2)


@pytest.fixture(scope="session")
def fake_openai() -> Iterator[TestServer]:
    with TestServer() as server:
        yield server


class Fleet:
    """A namespace, a queue and the worker processes serving them."""

    def __init__(self, tmp: Path, base_url: str | None, redis_url: str = REDIS_URL, broker_url: str | None = None,
                 **settings: str):
        """``broker_url``: by default the store's Redis, as chatq's own default (``BROKER_URL`` is a
        Redis broker apart from the store)."""
        tag = uuid.uuid4().hex[:8]
        broker_url = broker_url or redis_url
        self.redis_url = redis_url
        self.env = {
            **os.environ,
            "CHATQ_REDIS_URL": redis_url,
            "CHATQ_BROKER_URL": broker_url,
            "CHATQ_NAMESPACE": f"t{tag}",
            "CHATQ_QUEUE": f"t{tag}",
            "CHATQ_LEASE_SECONDS": "2",
            "CHATQ_SWEEP_INTERVAL": "0.5",
            "CHATQ_PROVIDER_BACKOFF_MAX": "2",
            "PYTHONUNBUFFERED": "1",
        }
        for k in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            self.env.pop(k, None)
        if base_url:
            self.env.update(OPENAI_BASE_URL=base_url, OPENAI_API_KEY="test-key")
        self.env.update({f"CHATQ_{k.upper()}": str(v) for k, v in settings.items()})
        self.tmp = tmp
        self.workers: list[subprocess.Popen] = []
        self._nodes: dict[int, str | None] = {}  # worker pid: its Celery node name, if known
        # The test's own client sees what the workers see: the fleet's settings that are core settings.
        self.settings = Settings(**{
            "redis_url": redis_url, "broker_url": broker_url, "namespace": self.env["CHATQ_NAMESPACE"],
            "queue": self.env["CHATQ_QUEUE"], **{k: v for k, v in settings.items() if k in Settings.model_fields},
        })

    def client(self) -> ChatClient:
        return ChatClient(settings=self.settings)

    def start_worker(self, concurrency: int | None = 20, how: str = "chatq", python: str = sys.executable,
                     cwd: Path = ROOT) -> subprocess.Popen:
        """``concurrency=None`` starts it exactly as a user's bare ``chatq worker`` would (a process
        per core); otherwise a ``chatq worker`` is one process. ``how="celery"`` the ordinary Celery
        way, ``celery -A chatq.worker worker``."""
        log = open(self.log_path(len(self.workers)), "w")
        env = dict(self.env) if concurrency is None else {**self.env, "CHATQ_PROCESSES": "1"}
        flags = ["-c", str(concurrency)] if concurrency else []
        command = {"chatq": [python, "-m", "chatq", "worker"],
                   "celery": [python, "-m", "celery", "-A", "chatq.worker", "worker"]}[how]
        proc = subprocess.Popen(
            [*command, *flags, "-l", "INFO"],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.workers.append(proc)
        # ``chatq worker`` names a one-process worker ``chatq-<pid>@<host>`` (chatq/cli.py); a supervisor's
        # children and ``celery worker`` (``celery@<host>``, shared by every such worker) are not addressable.
        self._nodes[proc.pid] = f"chatq-{proc.pid}@{socket.gethostname()}" if how == "chatq" and concurrency else None
        return proc

    def nodes(self) -> list[str]:
        """The Celery node names of this fleet's running worker processes."""
        live = [proc for proc in self.workers if proc.poll() is None]
        unnamed = [proc.pid for proc in live if self._nodes.get(proc.pid) is None]
        assert not unnamed, f"workers {unnamed} have no node name of their own: start them with a concurrency"
        return [self._nodes[proc.pid] for proc in live]  # type: ignore[misc]

    def pause_consuming(self) -> None:
        """This fleet's workers stop consuming its Celery queue (hand-offs still reach them).

        Addressed to its own workers: Celery broadcasts a control command without a destination to
        every worker on the broker, and other test runs on the machine share the test Redis (and
        RabbitMQ). Their workers told to add a consumer for this queue took its wake-ups and dropped
        them (their store has none of its sessions), which a sweeper's re-wakes, through the same
        queue, did not always outrun."""
        self._consumers("cancel_consumer")

    def resume_consuming(self) -> None:
        """Undo ``pause_consuming``: this fleet's workers consume its queue again."""
        self._consumers("add_consumer")

    def _consumers(self, command: str) -> None:
        nodes = self.nodes()
        control = self.client().app.control
        replies = getattr(control, command)(self.settings.queue, destination=nodes, reply=True, timeout=10)
        answered = {node for reply in replies or [] for node in reply}
        assert answered == set(nodes), f"{command}: {sorted(set(nodes) - answered)} did not answer"

    def log_path(self, index: int) -> Path:
        return self.tmp / f"worker-{index}.log"

    def wait_ready(self, proc: subprocess.Popen, timeout: float = 60) -> None:
        """Until Celery logs the worker ready (consuming): its start-up has run."""
        path = self.log_path(self.workers.index(proc))
        deadline = time.monotonic() + timeout
        while " ready." not in path.read_text():
            assert proc.poll() is None, f"worker exited {proc.returncode}:\n{path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"worker not ready:\n{path.read_text()[-3000:]}"
            time.sleep(0.05)

    def kill(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if is_amqp(self.settings.broker):  # a RabbitMQ queue (durable) outlives its workers: delete it
            with Connection(self.settings.broker, connect_timeout=5) as conn:
                conn.default_channel.queue_delete(self.settings.queue)
                conn.default_channel.exchange_delete(self.settings.queue)
        else:  # a Redis broker: the queue's list and kombu's binding of it
            queue = self.settings.queue
            get_redis(self.settings.broker).delete(queue, f"_kombu.binding.{queue}")
        r = get_redis(self.redis_url)  # one Redis or a cluster (SCAN walks every primary)
        keys = list(r.scan_iter(f"{self.settings.namespace}:*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i:i + 500])

    def logs(self) -> str:
        return "\n".join(p.read_text()[-4000:] for p in sorted(self.tmp.glob("worker-*.log")))


@pytest.fixture(scope="session")
def fleet(tmp_path_factory, fake_openai) -> Iterator[Fleet]:
    """Two worker processes on the test server, shared by the tests that need no special set-up."""
    f = Fleet(tmp_path_factory.mktemp("fleet"), fake_openai.base_url)
    f.start_worker(50)
    f.start_worker(50)
    yield f
    f.stop()


@pytest.fixture
def make_fleet(tmp_path, fake_openai) -> Iterator:
    made: list[Fleet] = []

    def make(online: bool = True, **settings: str) -> Fleet:
        f = Fleet(tmp_path / f"fleet{len(made)}", fake_openai.base_url if online else None, **settings)
        f.tmp.mkdir()
        made.append(f)
        return f

    yield make
    for f in made:
        f.stop()


@pytest.fixture
def client(fleet: Fleet) -> ChatClient:
    return fleet.client()


def wait_all(client: ChatClient, job_ids: list[str], timeout: float = 60):
    deadline = time.monotonic() + timeout
    return [client.wait(j, max(0.1, deadline - time.monotonic())) for j in job_ids]
