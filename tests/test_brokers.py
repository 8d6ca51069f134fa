"""The broker apart from the store: RabbitMQ (a quorum queue) and a standalone Redis, each the Celery
broker of real ``chatq worker`` processes whose store is the test Redis, through the same core guarantees.

RabbitMQ is the one at 127.0.0.1:5672 (guest/guest); without it its half is skipped, saying so. Each
fleet has its own queue, deleted when the fleet stops (``Fleet.stop``).
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import amqp
import pytest
import redis
from kombu import Connection, Queue

from chatq.api.app import create_app
from chatq.tasks.batch import BatchClient
from chatq.tasks.celery_app import is_amqp, make_app
from chatq.tasks.settings import Settings

from .conftest import BROKER_URL, Fleet, wait_all
from .test_api import KEY_A, api_settings, http, serve, signing
from .test_batch import expected_replies, openai_line
from .test_core import expected_history, history_pairs
from .test_crash_recovery import _wait_for_running, sigkill_mid_run_loses_nothing

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


def _rabbitmq_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        return True
    except OSError:
        return False


BROKERS = [
    pytest.param(RABBITMQ_URL, id="rabbitmq", marks=pytest.mark.skipif(
        not _rabbitmq_up(), reason="no RabbitMQ at 127.0.0.1:5672 (.ci/ensure-rabbitmq starts one if it can)")),
    pytest.param(BROKER_URL, id="redis"),
]


@pytest.fixture(scope="module", params=BROKERS)
def broker_url(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def bfleet(tmp_path_factory, fake_openai, broker_url) -> Iterator[Fleet]:
    """Two worker processes, the store on the test Redis, the broker ``broker_url``."""
    f = Fleet(tmp_path_factory.mktemp("broker-fleet"), fake_openai.base_url, broker_url=broker_url)
    for proc in (f.start_worker(20), f.start_worker(20)):
        f.wait_ready(proc)
    yield f
    f.stop()


@pytest.fixture
def bclient(bfleet):
    return bfleet.client()


def sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _until(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)


def ready_count(fleet: Fleet) -> int:
    """Wake-ups in the fleet's queue that no consumer has been given."""
    if is_amqp(fleet.settings.broker):
        with Connection(fleet.settings.broker, connect_timeout=5) as conn:
            return conn.default_channel.queue_declare(fleet.settings.queue, passive=True).message_count
    return redis.Redis.from_url(fleet.settings.broker).llen(fleet.settings.queue)


def held_sessions(fleet: Fleet) -> list[str]:
    """The sessions of every wake-up the broker still holds for the fleet's queue, once no consumer is
    left: RabbitMQ's ready and (requeued) unacked messages; a Redis broker's list (chatq's Redis
    transport keeps no unacked copies: ``celery_app.REDIS_BROKER_OPTIONS``)."""
    queue = fleet.settings.queue
    if is_amqp(fleet.settings.broker):
        with Connection(fleet.settings.broker, connect_timeout=5) as conn:
            _until(lambda: conn.default_channel.queue_declare(queue, passive=True).consumer_count == 0,
                   "the killed worker's consumer is gone")
            channel = conn.channel()
            found = []
            while (message := channel.basic_get(queue, no_ack=False)) is not None:
                found.append(message.headers["argsrepr"])
            channel.close()  # unacked: back in the queue
            return found
    r = redis.Redis.from_url(fleet.settings.broker, decode_responses=True)
    return [json.loads(m)["headers"]["argsrepr"] for m in r.lrange(queue, 0, -1)]


def test_only_an_amqp_broker_gets_a_quorum_queue():
    amqp_app = make_app(Settings(broker_url=RABBITMQ_URL, queue="q1"))
    queue = amqp_app.amqp.queues["q1"]
    assert queue.queue_arguments == {"x-queue-type": "quorum"} and queue.durable and not queue.auto_delete
    assert (queue.exchange.name, queue.exchange.type, queue.routing_key) == ("q1", "direct", "q1")
    assert amqp_app.conf.worker_detect_quorum_queues
    redis_app = make_app(Settings(broker_url=BROKER_URL, queue="q1"))
    assert not redis_app.amqp.queues["q1"].queue_arguments


def test_rabbitmq_holds_chatqs_queue_as_a_durable_quorum_queue(bfleet):
    if not is_amqp(bfleet.settings.broker):
        pytest.skip("RabbitMQ only")
    queue = bfleet.settings.queue
    with Connection(bfleet.settings.broker, connect_timeout=5) as conn:
        assert conn.default_channel.queue_declare(queue, passive=True).consumer_count == 2
        # RabbitMQ refuses to redeclare a queue with another type: this one is not classic...
        with pytest.raises(amqp.exceptions.PreconditionFailed, match="x-queue-type"):
            Queue(queue, durable=True, queue_arguments={"x-queue-type": "classic"})(conn.channel()).declare()
        # ...and is a durable quorum queue: declaring it so again is accepted
        Queue(queue, durable=True, queue_arguments={"x-queue-type": "quorum"})(conn.channel()).declare()


def test_concurrent_submitters_keep_each_sessions_order_and_get_or_create(bfleet, bclient):
    sessions = [sid("order") for _ in range(12)]
    texts = {s: [f"{s} turn {i}" for i in range(4)] for s in sessions}
    job_ids: dict[str, list[str]] = {s: [] for s in sessions}

    def submitter(mine: list[str]) -> None:
        client = bfleet.client()
        for i in range(4):
            for s in mine:
                job_ids[s].append(client.submit(texts[s][i], s).job_id)

    threads = [threading.Thread(target=submitter, args=(sessions[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = wait_all(bclient, [j for s in sessions for j in job_ids[s]], timeout=90)
    assert all(j.status == "succeeded" for j in done), bfleet.logs()
    for s in sessions:
        assert history_pairs(bclient, s) == expected_history(texts[s])
    s = sid("goc")
    made, again = bclient.create_session(s), bclient.create_session(s)
    assert made.session_id == again.session_id == s and made.created_at == again.created_at
    assert bclient.chat("hello there", s, timeout=30).status == "succeeded"
    assert len(bclient.get_session(s).messages) == 2 and s in bclient.list_sessions()


def test_a_session_is_handed_to_a_waiting_process_with_no_celery_message(bfleet, bclient):
    queue = bfleet.settings.queue
    assert bclient.chat("warm up", timeout=30).status == "succeeded"
    _until(lambda: bclient.r.zcard(bclient.keys.idle(queue)) > 0, "a worker waits for hand-offs")
    bfleet.pause_consuming()
    try:
        job = bclient.submit("hello, nobody is consuming wake-ups")
        assert bclient.wait(job.job_id, 30).status == "succeeded", bfleet.logs()
        assert ready_count(bfleet) == 0, "no Celery message was published for it"
    finally:
        bfleet.resume_consuming()


def consumed(fleet: Fleet, nodes: list[str]) -> dict[str, set[str]]:
    """The Celery queues each of these worker nodes consumes, as the workers answer."""
    replies = fleet.client().app.control.inspect(destination=nodes, timeout=10).active_queues() or {}
    return {node: {q["name"] for q in queues} for node, queues in replies.items()}


def test_pausing_a_fleets_consumers_leaves_other_fleets_on_the_broker_alone(bfleet, tmp_path, fake_openai,
                                                                           broker_url):
    """Another fleet on the same broker (another test run on the machine shares it) is a bystander: told
    to add a consumer for this fleet's queue, its workers would take this fleet's wake-ups and drop them,
    their store holding none of its sessions (``test_a_small_batch_and_wait`` then timed out)."""
    other = Fleet(tmp_path, fake_openai.base_url, broker_url=broker_url)
    try:
        other.wait_ready(other.start_worker(4))
        bfleet.pause_consuming()
        try:
            assert consumed(bfleet, bfleet.nodes()) == {node: set() for node in bfleet.nodes()}
            assert consumed(other, other.nodes()) == {other.nodes()[0]: {other.settings.queue}}
        finally:
            bfleet.resume_consuming()
        assert consumed(bfleet, bfleet.nodes()) == {node: {bfleet.settings.queue} for node in bfleet.nodes()}
        assert consumed(other, other.nodes()) == {other.nodes()[0]: {other.settings.queue}}
    finally:
        other.stop()


def test_a_small_batch_and_wait(bfleet, bclient):
    batches = BatchClient(bclient)
    t = uuid.uuid4().hex[:8]
    convs = {f"c{i}-{t}": [f"conversation {i} turn {n} {t}" for n in range(i + 1)] for i in range(4)}
    lines = [{"custom_id": cid, "messages": turns} for cid, turns in convs.items()]
    lines.append(openai_line(f"seeded-{t}", "earlier", f"after the seed {t}", system="Be brief."))
    info = batches.submit(lines)
    status = batches.wait(info.batch_id, timeout=60)
    assert status.done and (status.total, status.succeeded) == (5, 5), bfleet.logs()
    results = batches.results(info.batch_id)
    for r in results[:4]:
        assert r.status == "succeeded" and r.replies == expected_replies(convs[r.custom_id]), r
    assert results[4].status == "succeeded"


def test_the_http_api_submits_and_long_polls(bfleet):
    with serve(create_app(api_settings(), signing(bfleet.settings))) as url, http(url, KEY_A) as a:
        r = a.post("/v1/chat", json={"message": "My name is Alice", "session_id": sid("api")})
        assert r.status_code == 202, r.text
        polled = a.get(r.headers["Location"], params={"wait": 30})
        assert polled.status_code == 200 and polled.json()["status"] == "succeeded", polled.text


def test_sigkill_mid_run_is_recovered_by_lease_and_sweeper(tmp_path, fake_openai, broker_url):
    fleet = Fleet(tmp_path, fake_openai.base_url, broker_url=broker_url)
    try:
        sigkill_mid_run_loses_nothing(fleet, sessions=4, turns=4)
    finally:
        fleet.stop()


def test_a_wake_up_is_acked_once_its_session_runs_and_held_only_while_the_process_is_full(
        tmp_path, fake_openai, broker_url):
    """What RabbitMQ's ``consumer_timeout`` has to cover (README, "Running it for real"): the wake-up of
    a session that is running was acked when the session went on the loop, however long its job; one
    delivered to a full process stays unacked until a slot frees. Seen by killing the worker mid-job:
    RabbitMQ redelivers exactly what was never acked; a Redis broker keeps no unacked copy, so that
    wake-up died with the worker and the sweeper wakes its session."""
    fleet = Fleet(tmp_path, fake_openai.base_url, broker_url=broker_url, idle_wait="0")  # wake-ups only
    try:
        worker = fleet.start_worker(1)  # room for one session
        fleet.wait_ready(worker)
        client = fleet.client()
        running, queued = sid("long"), sid("behind")
        long_job = client.submit(f"a long job {running} [[stall:8]]", running).job_id
        _wait_for_running(client, [long_job])
        behind = client.submit("waits for the only slot", queued).job_id
        _until(lambda: ready_count(fleet) == 0, "the second wake-up is delivered to the full process")
        time.sleep(0.5)
        assert client.get(long_job).status == "running" and client.get(behind).status == "queued"
        fleet.kill(worker)
        held = held_sessions(fleet)
        assert not any(running in h for h in held), f"the running session's wake-up was acked: {held}"
        if is_amqp(broker_url):
            assert any(queued in h for h in held), f"the full process's wake-up was not acked: {held}"
        else:
            assert held == [], f"no unacked copies on a Redis broker: {held}"
        fleet.start_worker(4)
        done = wait_all(client, [long_job, behind], timeout=90)
        assert [j.status for j in done] == ["succeeded", "succeeded"], fleet.logs()
    finally:
        fleet.stop()


def test_a_warm_shutdown_hands_back_every_wake_up_it_holds(tmp_path, fake_openai, broker_url):
    """A full process asked to stop (SIGTERM) finishes its running turn and gives the broker back the
    wake-ups waiting in it, at once: with the sweeper too slow to matter here, another worker then
    runs every session."""
    fleet = Fleet(tmp_path, fake_openai.base_url, broker_url=broker_url, idle_wait="0", sweep_interval="600")
    try:
        worker = fleet.start_worker(1)
        fleet.wait_ready(worker)
        client = fleet.client()
        running = sid("long")
        long_job = client.submit(f"a long job {running} [[stall:3]]", running).job_id
        _wait_for_running(client, [long_job])
        behind = {sid("behind"): "" for _ in range(12)}
        for s in behind:
            behind[s] = client.submit(f"waits in the stopping process {s}", s).job_id
        _until(lambda: ready_count(fleet) < len(behind), "wake-ups are delivered to the full process")
        worker.terminate()
        assert worker.wait(30) == 0, fleet.logs()
        held = held_sessions(fleet)
        assert sorted(s for s in behind if any(s in h for h in held)) == sorted(behind), held
        assert client.get(long_job).status == "succeeded"
        fleet.start_worker(4)
        done = wait_all(client, list(behind.values()), timeout=60)
        assert {j.status for j in done} == {"succeeded"}, fleet.logs()
    finally:
        fleet.stop()
