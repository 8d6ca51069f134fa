"""The store on a real local Redis Cluster (3 masters, no replicas): the core guarantees with real
``chatq worker`` processes, keys spread over the three nodes, once with each broker a cluster store can
have (Celery's Redis transport cannot run on a cluster): RabbitMQ, as ``docker-compose.multinode.yml``
ships it, and a standalone Redis.

One cluster for the module (started with ``redis-server --cluster-enabled yes`` and ``redis-cli
--cluster create``, shut down after); skipped only when the binaries are missing. The RabbitMQ half is
skipped, saying so, when nothing answers at 127.0.0.1:5672 (as in ``tests/test_brokers.py``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from chatq.api.app import create_app
from chatq.testing.cluster import local_cluster, until
from chatq.testing.cluster import missing as local_cluster_missing
from chatq.tasks.batch import BatchClient
from chatq.tasks.redis_pool import cluster_nodes, get_redis
from chatq.tasks.settings import Settings

from .conftest import Fleet, wait_all
from .test_api import api_settings, http, serve, signing, KEY_A
from .test_batch import expected_replies, openai_line
from .test_brokers import BROKERS, ready_count
from .test_core import expected_history, history_pairs
from .test_crash_recovery import sigkill_mid_run_loses_nothing
from .test_live_turns import SLOW, deltas, first_event


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory) -> Iterator[str]:
    absent = local_cluster_missing()
    if absent:
        pytest.skip(f"the Redis Cluster tests start a local cluster and need {' and '.join(absent)} "
                    "(apt-get install redis-server)")
    with local_cluster(tmp_path_factory.mktemp("cluster")) as (url, _ports):
        yield url


@pytest.fixture(scope="module", params=BROKERS)
def broker_url(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def cfleet(tmp_path_factory, fake_openai, cluster_url, broker_url) -> Iterator[Fleet]:
    """Two worker processes with the store on the cluster and the broker ``broker_url``; its queue
    is deleted when the fleet stops (``Fleet.stop``)."""
    f = Fleet(tmp_path_factory.mktemp("cluster-fleet"), fake_openai.base_url, redis_url=cluster_url,
              broker_url=broker_url)
    for proc in (f.start_worker(20), f.start_worker(20)):
        f.wait_ready(proc)
    yield f
    f.stop()


@pytest.fixture
def cclient(cfleet):
    return cfleet.client()


def sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _node_of(r: redis.RedisCluster, key: str) -> str:
    return r.get_node_from_key(key).name


def test_a_cluster_url_is_never_the_broker(cluster_url):
    with pytest.raises(ValueError, match="CHATQ_BROKER_URL"):
        Settings(redis_url=cluster_url)
    with pytest.raises(ValueError, match="cannot be the Celery broker"):
        Settings(redis_url="redis://127.0.0.1:6379/0", broker_url=cluster_url)
    first, nodes = cluster_nodes("redis+cluster://u:pw@h1:7000,h2:7001/?ssl_cert_reqs=none")
    assert first == "redis://u:pw@h1:7000/0?ssl_cert_reqs=none" and nodes == [("h1", 7000), ("h2", 7001)]


def test_concurrent_submitters_keep_each_sessions_order_across_nodes(cfleet, cclient):
    r = get_redis(cfleet.settings.redis_url)
    assert isinstance(r, redis.RedisCluster) and len(r.get_primaries()) == 3
    sessions = [sid("order") for _ in range(12)]
    texts = {s: [f"{s} turn {i}" for i in range(4)] for s in sessions}
    nodes = {_node_of(r, cclient.keys.fifo(s)) for s in sessions}
    assert len(nodes) >= 2, "the sessions should spread over the cluster's nodes"
    job_ids: dict[str, list[str]] = {s: [] for s in sessions}

    def submitter(mine: list[str]) -> None:
        client = cfleet.client()
        for i in range(4):
            for s in mine:
                job_ids[s].append(client.submit(texts[s][i], s).job_id)

    threads = [threading.Thread(target=submitter, args=(sessions[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = wait_all(cclient, [j for s in sessions for j in job_ids[s]], timeout=90)
    assert all(j.status == "succeeded" for j in done), cfleet.logs()
    for s in sessions:
        assert history_pairs(cclient, s) == expected_history(texts[s])
    listed = set(cclient.list_sessions())
    assert set(sessions) <= listed
    # get-or-create: the same session twice, then its first turn
    s = sid("goc")
    made, again = cclient.create_session(s), cclient.create_session(s)
    assert made.session_id == again.session_id == s and made.created_at == again.created_at
    assert cclient.chat("hello there", s, timeout=30).status == "succeeded"
    assert len(cclient.get_session(s).messages) == 2 and s in cclient.list_sessions()


def test_a_session_is_handed_to_a_waiting_process_with_no_celery_message(cfleet, cclient):
    queue = cfleet.settings.queue
    assert cclient.chat("warm up", timeout=30).status == "succeeded"
    until(lambda: cclient.r.zcard(cclient.keys.idle(queue)) > 0, "a worker waits for hand-offs")
    cfleet.pause_consuming()
    try:
        job = cclient.submit("hello, nobody is consuming wake-ups")
        done = cclient.wait(job.job_id, 30)
        assert done.status == "succeeded", cfleet.logs()
        assert ready_count(cfleet) == 0, "no Celery message was published for it"
    finally:
        cfleet.resume_consuming()


def test_a_small_batch_and_wait(cfleet, cclient):
    batches = BatchClient(cclient)
    t = uuid.uuid4().hex[:8]
    convs = {f"c{i}-{t}": [f"conversation {i} turn {n} {t}" for n in range(i + 1)] for i in range(4)}
    lines = [{"custom_id": cid, "messages": turns} for cid, turns in convs.items()]
    lines.append(openai_line(f"seeded-{t}", "earlier", f"after the seed {t}", system="Be brief."))
    info = batches.submit(lines)
    status = batches.wait(info.batch_id, timeout=60)
    assert status.done and (status.total, status.succeeded) == (5, 5), cfleet.logs()
    results = batches.results(info.batch_id)
    for r in results[:4]:
        assert r.status == "succeeded" and r.replies == expected_replies(convs[r.custom_id]), r
    assert results[4].status == "succeeded"
    assert {r.session_id for r in results} <= set(cclient.list_sessions())


def test_a_streamed_job_and_a_stop_request(cfleet, cclient):
    job = cclient.submit("tell me a story [[stream delay=0.01 words=40]]", sid("live"), stream=True)
    seen = list(cclient.stream(job.job_id, timeout=60))
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert seen[0].type == "job.started" and seen[-1].type == "job.succeeded"
    assert deltas(seen) == cclient.get(job.job_id).result.content
    # a stop request travels by PUBLISH (from Lua, on the session's node) to every worker process
    s = sid("stop")
    slow = cclient.submit(f"stop me {uuid.uuid4().hex[:6]} {SLOW}", s, stream=True)
    later = cclient.submit("and then this", s)
    first_event(cclient, slow.job_id, "message.delta")
    assert cclient.cancel(slow.job_id).cancel == "keep"
    stopped = cclient.wait(slow.job_id, 10)
    assert stopped.status == "cancelled", cfleet.logs()
    assert list(cclient.stream(slow.job_id))[-1].type == "job.cancelled"
    assert cclient.wait(later.job_id, 30).status == "succeeded"
    assert [m.role for m in cclient.get_session(s).messages] == ["user", "assistant", "user", "assistant"]


def test_the_http_api_submits_and_long_polls(cfleet):
    with serve(create_app(api_settings(), signing(cfleet.settings))) as url, http(url, KEY_A) as a:
        s = sid("api")
        r = a.post("/v1/chat", json={"message": "My name is Alice", "session_id": s})
        assert r.status_code == 202, r.text
        polled = a.get(r.headers["Location"], params={"wait": 30})
        assert polled.status_code == 200 and polled.json()["status"] == "succeeded", polled.text
        events = a.get(f"/v1/jobs/{r.json()['job_id']}/events", headers={"Accept": "text/event-stream"})
        assert events.status_code == 200 and "job.succeeded" in events.text


def test_sigkill_mid_run_is_recovered_by_lease_and_sweeper(tmp_path, fake_openai, cluster_url, broker_url):
    fleet = Fleet(tmp_path, fake_openai.base_url, redis_url=cluster_url, broker_url=broker_url)
    try:
        sigkill_mid_run_loses_nothing(fleet, sessions=4, turns=4)
    finally:
        fleet.stop()
