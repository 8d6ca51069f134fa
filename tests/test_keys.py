"""The key layout: no two objects ever share a key, and every script call stays in one hash slot.

The collision cases of the issue end to end too: through the CLI (`chatq sessions delete
victim:messages` and friends) and the HTTP API, against the shared fleet.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import re
import uuid

import pytest
import redis
import redis.asyncio as aioredis
from redis.cluster import key_slot
from redis.commands.core import AsyncScript, Script

from chatq.tasks.batch import BatchClient
from chatq.tasks.client import SESSION_ID, ChatClient, validate_session_id
from chatq.tasks.errors import InvalidRequest
from chatq.tasks.keys import Keys, bucket, new_job_id
from chatq.tasks.models import Checkpoint
from chatq.tasks.session_machine import SessionMachine
from chatq.worker.handoff import Handoff
from chatq.worker.rate_limit import RateLimiter

from .conftest import BROKER_URL
from .test_core import run_cli

SESSIONS = ["victim", "victim:messages", "victim:meta", "victim:msgs", "q", "q:queue", "q:fifo", "x", "x:lease",
            "yy", "yy:messages", "s", "j", "meta", "a:b:c", "a.b@c-d", "0000", "victim:meta:msgs", "rec", "ck",
            "victim:s:victim", "batch", "pending", "sessions"]
HEX_NS = "0123456789abcdef" * 2  # a namespace spelled like a batch ID: its fleet tag is a batch's tag
NAMESPACES = ["chatq", "chatq.t.acme", "chatq.t.acme.t.x", "beef", "c", HEX_NS]
QUEUES = ["q", "q:x", "handed:q", "chatq"]
MODELS = ["gpt-4o", "a}b", "a{b", "a:b:1:r", "m:1"]


def every_key(keys: Keys) -> dict[str, tuple]:
    """Every key of every kind for adversarial IDs in one namespace, mapped to the object it names."""
    made: dict[str, tuple] = {}

    def add(key: str, *obj) -> None:
        assert key not in made, f"{key!r} names both {made[key]} and {obj}"
        made[key] = obj

    for sid in SESSIONS:
        for kind in ("session", "messages", "fifo", "lease"):
            add(getattr(keys, kind)(sid), "session", sid, kind)
        for n in range(3):
            job_id = new_job_id(sid)
            add(keys.job(job_id), "job", job_id)
            add(keys.checkpoint(job_id), "checkpoint", job_id)
    for batch_id in (uuid.uuid4().hex, bucket("q") * 8, HEX_NS):
        add(keys.batch(batch_id), "batch", batch_id)
        add(keys.batch_conversations(batch_id), "conversations", batch_id)
    for name in ("sessions", "pending", "woken", "agents", "namespaces", "sweep_lock"):
        add(getattr(keys, name), "fleet", name)
    for queue in QUEUES:
        add(keys.idle(queue), "idle", queue)
        add(keys.handed(queue), "handed", queue)
    for worker in ("host:1", "host:1:2", "q"):
        add(keys.stop(worker), "stop", worker)
    for model, window in itertools.product(MODELS, (1, 12)):
        requests, tokens = keys.rate(model, window)
        add(requests, "requests", model, window)
        add(tokens, "tokens", model, window)
    for key in ("k", "k:1", "{x}", "victim:messages"):
        add(keys.idempotency(key), "idempotency", key)
    return made


def test_no_two_objects_share_a_key_in_any_namespace():
    made: dict[str, tuple] = {}
    for ns in NAMESPACES:
        for key, obj in every_key(Keys(ns)).items():
            assert key.startswith(f"{ns}:"), key
            assert key not in made, f"{key!r} names both {made[key]} and {(ns, *obj)}"
            made[key] = (ns, *obj)
    assert len(made) > 1000


def test_a_sessions_keys_and_its_jobs_keys_share_its_bucket_tag():
    keys = Keys("chatq")
    for sid in SESSIONS:
        job_id = new_job_id(sid)
        group = [keys.session(sid), keys.messages(sid), keys.fifo(sid), keys.lease(sid), keys.job(job_id),
                 keys.checkpoint(job_id)]
        assert {re.search(r"\{(.*?)\}", k)[1] for k in group} == {bucket(sid)}
        assert len({key_slot(k.encode()) for k in group}) == 1
    fleet = [keys.sessions, keys.pending, keys.woken, keys.agents, keys.namespaces, keys.sweep_lock,
             keys.idle("q"), keys.handed("q"), keys.stop("h:1")]
    assert len({key_slot(k.encode()) for k in fleet}) == 1
    batch_id = uuid.uuid4().hex
    assert key_slot(keys.batch(batch_id).encode()) == key_slot(keys.batch_conversations(batch_id).encode())
    for model in MODELS:
        assert len({key_slot(k.encode()) for k in keys.rate(model, 7)}) == 1


def test_ids_that_could_break_the_layout_are_refused():
    for bad in ("a}b", "a{b", "{x}", "a b", ":x"):
        with pytest.raises(InvalidRequest):
            validate_session_id(bad)
    assert not SESSION_ID.fullmatch("a}b")
    keys = Keys()
    for bad in ("*", "abc", "x" * 32, "0" * 31 + "}", "victim:messages"):
        with pytest.raises(ValueError):
            keys.job(bad)
        with pytest.raises(ValueError):
            keys.batch(bad)


@pytest.fixture
def slots_seen(monkeypatch):
    """Every script call's keys, recorded on the way to Redis (the call itself goes through)."""
    calls: list[tuple[str, list[str]]] = []
    names = {}
    real = Script.__call__

    real_async = AsyncScript.__call__

    @functools.wraps(real)
    def spy(self, keys=[], args=[], client=None):  # noqa: B006 (redis-py's own signature)
        calls.append((names.get(self.sha, self.sha), list(keys)))
        return real(self, keys, args, client)

    @functools.wraps(real_async)
    async def async_spy(self, keys=[], args=[], client=None):  # noqa: B006
        calls.append((names.get(self.sha, self.sha), list(keys)))
        return await real_async(self, keys, args, client)

    monkeypatch.setattr(Script, "__call__", spy)
    monkeypatch.setattr(AsyncScript, "__call__", async_spy)
    from chatq.tasks import scripts

    for name in scripts.names():
        names[hashlib.sha1(scripts.source(name).encode()).hexdigest()] = name
    return calls


def test_every_script_call_of_a_whole_session_life_touches_one_hash_slot(fleet, slots_seen):
    """Producer, a runner (in this process, on the embedded model), hand-offs, the sweeper,
    batches, webhooks and rate limits: every script call they make, recorded on its way."""
    from chatq.tasks.wakeups import WakePublisher
    from chatq.worker.runner import SessionRunner

    class NoWakeups(WakePublisher):
        def wake(self, session_id: str, namespace: str, job_id: str | None = None) -> None:
            pass  # this process runs every session itself

    tag = f"slot{uuid.uuid4().hex[:6]}"  # a queue no worker consumes: this process runs it all
    # The broker apart from the store, as on a cluster: a submit to the store's own Redis as broker
    # also pushes the wake-up (fleet keys, another slot), which only a standalone Redis does.
    settings = fleet.settings.model_copy(update={"namespace": tag, "queue": tag, "idle_wait": 0.2,
                                                 "broker_url": BROKER_URL})
    client = ChatClient(settings=settings, tenant="acme")
    r = client.r

    async def worker_side() -> None:
        ar = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        runner = SessionRunner(settings, ar, r, NoWakeups(client.app, tag), "h:1")
        job = client.submit("hello", "victim:messages", idempotency_key="k1", session_ttl=60)
        client.submit("again", "victim:messages")
        client.cancel(client.submit("never", "victim:messages").job_id)
        assert await runner.drain("victim:messages", client.namespace, job.job_id) == 2
        r.zadd(runner.keys.idle(tag), {"h:1#1": 2**50})  # a waiter, so the next submit is handed
        handed = client.submit("to a waiter", "x:lease")
        r.zrem(runner.keys.idle(tag), "h:1#1")
        handoff = Handoff(ar, runner.keys, "h:1", tag, 0.1)
        got = await handoff.next_sessions(2)
        assert [(h.session_id, h.job_id) for h in got] == [("x:lease", handed.job_id)]
        assert await runner.drain("x:lease", got[0].namespace, got[0].job_id) == 1
        await handoff.stop()
        runner.leases.hold(client.keys.lease("x"), "t")
        runner.leases.renew_now()
        runner.leases.drop(client.keys.lease("x"), "t")
        await RateLimiter(ar, tag).acquire("a}b", 100, None, 1)
        await runner.notify(runner.space(client.namespace), job.job_id)
        await ar.aclose()

    try:
        asyncio.run(worker_side())
        machine = SessionMachine(r, client.keys)
        client.submit("left for later", "q:queue")
        assert machine.take("q:queue", "t", None, 3, acquire_ms=5000).outcome == "head"
        machine.save_checkpoint("q:queue", new_job_id("q:queue"), "t", Checkpoint(messages=[]))
        assert machine.release("q:queue", "t") == 1
        client.create_session("other", ttl=5)
        assert client.delete_session("other") is True
        BatchClient(client).submit([{"custom_id": "c", "messages": ["a", "b"]}])
        machine.sweep(0, 0)
        client.machine.count_active()
        client.list_sessions()
    finally:
        for ns in (tag, client.namespace):
            for k in r.scan_iter(f"{ns}:*"):
                r.delete(k)
        redis.Redis.from_url(settings.broker).delete(tag)
    called = {name for name, _ in slots_seen}
    assert {"announce", "submit", "handoff_give", "cancel", "take", "checkpoint", "commit", "release", "create",
            "delete", "unindex", "sweep", "handoff_wait", "handoff_stop", "renew", "rate_limit",
            "webhook_claim"} <= called, called
    for name, keys in slots_seen:
        assert len({key_slot(k.encode()) for k in keys}) == 1, f"{name} touches several slots: {keys}"


# --- the cases, end to end -------------------------------------------------------------

def history(client: ChatClient, sid: str) -> list[str]:
    return [m.content for m in client.get_session(sid).messages]


def test_a_session_id_never_names_another_sessions_keys_through_the_cli(fleet):
    client = fleet.client()
    tag = uuid.uuid4().hex[:6]
    victim, q, x, yy = (f"{name}{tag}" for name in ("victim", "q", "x", "yy"))
    assert client.chat("My name is Vic", victim, timeout=30).status == "succeeded"

    out = run_cli(fleet, "sessions", "delete", f"{victim}:messages")
    assert out.returncode == 1 and "unknown session" in out.stderr and "Traceback" not in out.stderr
    assert run_cli(fleet, "sessions", "delete", f"{victim}:meta").returncode == 1
    kept = history(client, victim)
    assert kept[0] == "My name is Vic" and len(kept) == 2

    first = client.submit("hold [[stall:1]] on", q)
    second = client.submit("and then", q)
    assert run_cli(fleet, "sessions", "delete", f"{q}:queue").returncode == 1
    assert run_cli(fleet, "sessions", "delete", f"{q}:fifo").returncode == 1
    assert [client.wait(j.job_id, 30).status for j in (first, second)] == ["succeeded", "succeeded"]

    assert client.chat("lease holder?", f"{x}:lease", timeout=30).status == "succeeded"
    assert client.chat("still free", x, timeout=30).status == "succeeded"

    done = client.chat("history elsewhere", f"{yy}:messages", timeout=30)
    assert done.status == "succeeded", done.error
    out = run_cli(fleet, "sessions", "show", f"{yy}:messages")
    assert out.returncode == 0 and "Traceback" not in out.stderr
    assert [m["content"] for m in json.loads(out.stdout)["messages"]][0] == "history elsewhere"
    assert run_cli(fleet, "sessions", "show", yy).returncode == 1


def test_a_session_id_never_names_another_sessions_keys_over_http(fleet):
    from .test_api import KEY_A, api_settings, http, serve
    from chatq.api.app import create_app

    tag = uuid.uuid4().hex[:6]
    with serve(create_app(api_settings(), fleet.settings)) as url, http(url, KEY_A) as a:
        r = a.post(f"/v1/sessions/victim{tag}/messages", json={"message": "My name is Vic"})
        job = a.get(f"/v1/jobs/{r.json()['job_id']}", params={"wait": 30}).json()
        assert job["status"] == "succeeded"
        assert a.delete(f"/v1/sessions/victim{tag}:messages").status_code == 404
        assert len(a.get(f"/v1/sessions/victim{tag}").json()["messages"]) == 2
        r = a.post(f"/v1/sessions/yy{tag}:messages/messages", json={"message": "hi"})
        assert a.get(f"/v1/jobs/{r.json()['job_id']}", params={"wait": 30}).json()["status"] == "succeeded"
        assert a.get(f"/v1/sessions/yy{tag}:messages").status_code == 200
        assert a.post("/v1/sessions/a}b/messages", json={"message": "hi"}).status_code == 422
