"""Every Lua script called directly, for every outcome it can return, against real Redis.

The core promise first: a worker that lost its lease can never append (``commit`` with a stale
token changes nothing), and a lease that expired is taken over by the next worker's ``take``.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
import redis

from chatq.tasks import scripts
from chatq.tasks.job_store import encode_job
from chatq.tasks.keys import Keys, new_job_id
from chatq.tasks.models import Checkpoint, Job, JobResult, Message, Usage, utcnow
from chatq.tasks.session_machine import (CancelOutcome, CommitOutcome, SessionMachine, SubmitOutcome,
                                         TakeOutcome, listing_score)
from chatq.tasks.session_store import SessionStore

from .conftest import REDIS_URL
from .test_redis_outage import private_redis  # noqa: F401  (a fixture: a redis-server of the test's own)

TTL = 60


@pytest.fixture
def r():
    return redis.Redis.from_url(REDIS_URL, decode_responses=True)


@pytest.fixture
def keys(r):
    keys = Keys(f"sc{uuid.uuid4().hex[:8]}")
    yield keys
    for k in r.scan_iter(f"{keys.ns}:*"):
        r.delete(k)


@pytest.fixture
def machine(r, keys):
    return SessionMachine(r, keys, result_ttl=TTL)


def queue_job(machine: SessionMachine, sid: str, fields: dict | None = None, **kwargs) -> str:
    job = Job(job_id=new_job_id(sid), session_id=sid, **{"message": "hi", **(fields or {})})
    outcome = machine.submit(job.job_id, sid, encode_job(job), **kwargs)
    assert outcome in (SubmitOutcome.created, SubmitOutcome.queued_behind, SubmitOutcome.held)
    return job.job_id


def start(machine: SessionMachine, sid: str, token: str = "w1", lease_ms: int = 5000):
    """A worker's first two takes: take the lease (learning the head), then start the head."""
    first = machine.take(sid, token, None, 3, "w", 10, lease_ms)
    assert first.outcome is TakeOutcome.head
    taken = machine.take(sid, token, first.next_job, 3, "w", 10)
    assert taken.outcome is TakeOutcome.run
    return taken


def turn(text: str) -> list[Message]:
    return [Message(role="user", content=text), Message(role="assistant", content=f"re: {text}")]


# --- the files themselves ---------------------------------------------------------------------

HEADER = re.compile(r"^-- (KEYS|ARGV)\[(\d+)(\.\.)?\] ", re.MULTILINE)
USED = re.compile(r"\b(KEYS|ARGV)\[(\d+)\]")
UNPACKED = re.compile(r"unpack\((ARGV), (\d+)\)")


@pytest.mark.parametrize("name", scripts.names())
def test_each_script_documents_every_key_and_argument_it_uses_on_its_own_line(name):
    text = scripts.source(name)
    assert not re.search(r"^--#include", text, re.MULTILINE), "includes are spliced in"
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    documented = {(kind, int(n), bool(rest)) for kind, n, rest in HEADER.findall(text)}
    used = {(kind, int(n)) for kind, n in USED.findall(body)} | {(k, int(n)) for k, n in UNPACKED.findall(body)}
    singles = {(kind, n) for kind, n, rest in documented if not rest}
    ranges = {(kind, n) for kind, n, rest in documented if rest}
    assert used <= singles | ranges, f"used but not documented: {sorted(used - singles - ranges)}"
    loops = {kind for kind in ("KEYS", "ARGV") if re.search(rf"{kind}\[i", body) or f"ipairs({kind})" in body}
    assert singles | ranges <= used | {(k, n) for k, n in ranges if k in loops}, "documented but never used"
    for kind in ("KEYS", "ARGV"):
        numbers = sorted(n for k, n, _ in documented if k == kind)
        assert numbers == list(range(1, len(numbers) + 1)), f"{kind} documented in order, one per line"
    assert re.search(r"^-- Returns ", text, re.MULTILINE) or name in ("handoff_wait",), "says what it returns"


def test_scripts_are_package_data_of_the_base():
    from importlib.resources import files

    assert {f"{n}.lua" for n in scripts.names()} <= {p.name for p in files("chatq.tasks").joinpath("lua").iterdir()}


# --- submit -----------------------------------------------------------------------------------

def test_submit_outcomes(r, keys, machine):
    first = queue_job(machine, "s")
    assert r.lrange(keys.fifo("s"), 0, -1) == [first]
    job = Job(job_id=new_job_id("s"), session_id="s", message="second")
    assert machine.submit(job.job_id, "s", encode_job(job)) is SubmitOutcome.queued_behind
    assert machine.submit(job.job_id, "s", encode_job(job)) is SubmitOutcome.existing
    assert r.lrange(keys.fifo("s"), 0, -1) == [first, job.job_id], "an existing job is not queued twice"
    busy = Job(job_id=new_job_id("s"), session_id="s", message="busy")
    assert machine.submit(busy.job_id, "s", encode_job(busy), on_busy="reject") is SubmitOutcome.busy
    assert not r.exists(keys.job(busy.job_id)) and r.llen(keys.fifo("s")) == 2, "busy writes nothing"

    r.set(keys.lease("t"), "someone", px=5000)
    held = Job(job_id=new_job_id("t"), session_id="t", message="hi")
    assert machine.submit(held.job_id, "t", encode_job(held)) is SubmitOutcome.held
    assert r.hget(keys.session("t"), "created_at"), "submit makes the session on first use"
    assert set(r.zrange(keys.sessions, 0, -1)) == {"s", "t"} and set(r.zrange(keys.pending, 0, -1)) == {"s", "t"}


def test_submit_refuses_a_job_id_without_its_sessions_bucket(machine):
    job = Job(job_id=new_job_id("other"), session_id="s", message="hi")
    with pytest.raises(ValueError, match="bucket"):
        machine.submit(job.job_id, "s", encode_job(job))


def test_submit_hands_a_created_session_only_to_a_live_waiter(r, keys, machine):
    assert queue_job(machine, "alone", hand_to=keys, queue="q")  # nobody waits: created
    r.zadd(keys.idle("q"), {"h:1#1": int(time.time() * 1000) + 60_000})  # a process with room for one
    job = Job(job_id=new_job_id("s2"), session_id="s2", message="hi")
    assert machine.submit(job.job_id, "s2", encode_job(job), hand_to=keys, queue="q") is SubmitOutcome.handed
    assert r.lrange(keys.handed("q"), 0, -1) == [f"{keys.ns} s2 {job.job_id}"]
    other = Job(job_id=new_job_id("s3"), session_id="s3", message="hi")
    assert machine.submit(other.job_id, "s3", encode_job(other), hand_to=keys, queue="q") is SubmitOutcome.created, \
        "room for one, one item already handed: the next one is published"


def test_a_submit_given_its_wake_up_hands_or_pushes_it_in_the_same_step_and_only_for_a_new_session(r, keys, machine):
    queue = f"{keys.ns}:q"  # the Celery queue's list, under the test's namespace (cleaned up with it)

    def submit(session: str) -> tuple[SubmitOutcome | None, str]:
        job = Job(job_id=new_job_id(session), session_id=session, message="hi")
        wake = f"wake {session} {job.job_id}"
        return machine.submit(job.job_id, session, encode_job(job), hand_to=keys, queue=queue, wake=wake), job.job_id

    r.zadd(keys.idle(queue), {"h:1#1": int(time.time() * 1000) + 60_000})  # a process with room for one
    outcome, handed = submit("w1")
    assert outcome is SubmitOutcome.handed and r.lrange(keys.handed(queue), 0, -1) == [f"{keys.ns} w1 {handed}"]
    assert r.llen(queue) == 0, "handed: no Celery message"
    outcome, woken = submit("w2")
    assert outcome is SubmitOutcome.woken, "room for one, already handed one: the wake-up goes to Celery"
    assert r.lrange(queue, 0, -1) == [f"wake w2 {woken}"]
    assert submit("w2")[0] is SubmitOutcome.queued_behind and r.llen(queue) == 1, "an existing session: nothing"
    start(machine, "w1")
    r.delete(keys.handed(queue))
    assert submit("w1")[0] is SubmitOutcome.queued_behind and r.llen(queue) == 1
    r.delete(keys.idle(queue))
    outcome, third = submit("w3")
    assert outcome is SubmitOutcome.woken and r.lrange(queue, 0, 0) == [f"wake w3 {third}"]


# --- cancel -----------------------------------------------------------------------------------

def test_cancel_outcomes(r, keys, machine):
    running = queue_job(machine, "s")
    queued = queue_job(machine, "s")
    start(machine, "s")
    stops = r.pubsub(ignore_subscribe_messages=True)
    stops.subscribe(keys.cancel_channel)
    assert machine.cancel(running, "s", mode="rollback") == (CancelOutcome.requested, None)
    assert r.hget(keys.job(running), "status") == "running", "its worker ends it"
    assert r.hget(keys.job(running), "cancel") == "rollback"
    assert next_message(stops) == f"{running} rollback", "every worker process is told"
    assert machine.cancel(queued, "s") == (CancelOutcome.cancelled, None)
    assert r.lrange(keys.fifo("s"), 0, -1) == [running]
    assert r.hget(keys.job(queued), "status") == "cancelled" and 0 < r.ttl(keys.job(queued)) <= TTL
    assert machine.cancel(queued, "s") == (CancelOutcome.finished, "cancelled")
    assert machine.cancel(new_job_id("s"), "s").outcome is CancelOutcome.unknown
    stops.close()


def next_message(pubsub, timeout: float = 2.0) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (m := pubsub.get_message(timeout=0.1)) is not None:
            return m["data"]
    return None


# --- take -------------------------------------------------------------------------------------

def test_take_run_returns_the_job_its_checkpoint_and_the_history_tail(r, keys, machine):
    r.rpush(keys.messages("s"), *(Message(role="user", content=str(i)).model_dump_json() for i in range(5)))
    job_id = queue_job(machine, "s")
    r.set(keys.checkpoint(job_id), Checkpoint(messages=turn("half")).model_dump_json())
    taken = start(machine, "s")
    assert taken.job_id == job_id and taken.fields["status"] == "running" and taken.fields["attempts"] == "1"
    assert [m.content for m in taken.checkpoint.messages] == ["half", "re: half"]
    assert [m.content for m in taken.history] == ["0", "1", "2", "3", "4"]
    assert taken.created_at == r.hget(keys.session("s"), "created_at")
    assert r.get(keys.lease("s")) == "w1" and 0 < r.pttl(keys.lease("s")) <= 5000


def test_take_lost_when_another_worker_holds_the_lease(keys, machine):
    job_id = queue_job(machine, "s")
    start(machine, "s", "w1")
    assert machine.take("s", "w2", job_id, 3, acquire_ms=5000).outcome is TakeOutcome.lost
    assert machine.take("s", "w2", job_id, 3).outcome is TakeOutcome.lost, "without acquiring: not the holder"


def test_take_after_the_lease_expired_goes_to_the_next_worker(r, keys, machine):
    job_id = queue_job(machine, "s")
    start(machine, "s", "dead", lease_ms=200)
    time.sleep(0.3)
    assert machine.take("s", "dead", job_id, 3).outcome is TakeOutcome.lost, "its lease is gone"
    taken = machine.take("s", "next", job_id, 3, acquire_ms=5000)
    assert taken.outcome is TakeOutcome.run and taken.fields["attempts"] == "2"
    assert r.get(keys.lease("s")) == "next"


def test_take_releases_an_empty_fifo(r, keys, machine):
    r.set(keys.lease("s"), "w1", px=5000)  # a holder that finds nothing left (a cancel emptied it)
    assert machine.take("s", "w1", None, 3).outcome is TakeOutcome.released
    assert not r.exists(keys.lease("s"))
    assert machine.take("s", "w2", None, 3, acquire_ms=5000).outcome is TakeOutcome.released
    assert not r.exists(keys.lease("s"))


def test_whatever_empties_the_fifo_starts_the_sessions_retention(r, keys):
    machine = SessionMachine(r, keys, TTL, session_ttl=100)

    note = Message(role="user", content="x").model_dump_json()

    def resting(sid: str) -> bool:
        return 0 < r.ttl(keys.session(sid)) <= 100 and 0 < r.ttl(keys.messages(sid)) <= 100

    job_id = queue_job(machine, "commit")
    r.rpush(keys.messages("commit"), note)
    assert r.ttl(keys.session("commit")) == -1, "kept while work is queued"
    start(machine, "commit")
    assert machine.commit("commit", job_id, "w1", "succeeded", turn("a"), Usage()).outcome is CommitOutcome.released
    assert resting("commit")
    gone = queue_job(machine, "skip")  # the history is kept (no TTL) again while this job is queued
    assert r.ttl(keys.session("skip")) == -1 and r.ttl(keys.messages("commit")) > 0
    r.rpush(keys.messages("skip"), note)
    r.delete(keys.job(gone))
    assert machine.take("skip", "w1", gone, 3, acquire_ms=5000).outcome is TakeOutcome.skip and resting("skip")
    queued = queue_job(machine, "cancel")
    r.rpush(keys.messages("cancel"), note)
    machine.cancel(queued, "cancel")
    assert resting("cancel")


def test_take_names_the_head_when_the_caller_guessed_wrong(keys, machine):
    first, second = queue_job(machine, "s"), queue_job(machine, "s")
    taken = machine.take("s", "w1", second, 3, acquire_ms=5000)
    assert (taken.outcome, taken.next_job) == (TakeOutcome.head, first)
    assert machine.take("s", "w1", "not-an-id", 3).next_job == first


def test_take_skips_a_head_whose_record_is_gone(r, keys, machine):
    gone, kept = queue_job(machine, "s"), queue_job(machine, "s")
    r.delete(keys.job(gone))
    taken = machine.take("s", "w1", gone, 3, acquire_ms=5000)
    assert (taken.outcome, taken.job_id, taken.next_job) == (TakeOutcome.skip, gone, kept)
    assert r.lrange(keys.fifo("s"), 0, -1) == [kept]


def test_take_fails_a_job_whose_workers_keep_dying(r, keys, machine):
    doomed, after = queue_job(machine, "s"), queue_job(machine, "s")
    r.hset(keys.job(doomed), "batch_id", "b" * 32)
    for attempt in range(3):
        assert machine.take("s", f"w{attempt}", doomed, 3, acquire_ms=5000).outcome is TakeOutcome.run
        r.delete(keys.lease("s"))  # its worker died
    pubsub = r.pubsub()
    pubsub.subscribe(keys.done_channel(doomed))
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    taken = machine.take("s", "w3", doomed, 3, acquire_ms=5000)
    assert (taken.outcome, taken.job_id, taken.next_job) == (TakeOutcome.exhausted, doomed, after)
    assert taken.fields == {"batch_id": "b" * 32}, "its batch counts it as finished"
    assert r.hget(keys.job(doomed), "status") == "failed" and "WorkerLost" in r.hget(keys.job(doomed), "error")
    assert r.lrange(keys.fifo("s"), 0, -1) == [after]
    message = pubsub.get_message(timeout=2)
    assert message and message["data"] == "failed"


# --- checkpoint, commit, release, renew -------------------------------------------------------

def test_checkpoint_only_by_the_lease_holder(r, keys, machine):
    job_id = queue_job(machine, "s")
    start(machine, "s", "w1")
    assert machine.save_checkpoint("s", job_id, "stale", Checkpoint(messages=turn("x"))) is False
    assert not r.exists(keys.checkpoint(job_id))
    assert machine.save_checkpoint("s", job_id, "w1", Checkpoint(messages=turn("x"))) is True
    assert r.exists(keys.checkpoint(job_id))


def test_commit_with_a_stale_token_appends_nothing_and_leaves_the_job_alone(r, keys, machine):
    job_id = queue_job(machine, "s")
    start(machine, "s", "old", lease_ms=200)
    time.sleep(0.3)
    start(machine, "s", "new")  # the session moved on to another worker
    before = {k: r.dump(k) for k in (keys.job(job_id), keys.fifo("s"), keys.session("s"), keys.lease("s"))}
    committed = machine.commit("s", job_id, "old", "succeeded", turn("late"), Usage(total_tokens=9))
    assert committed.outcome is CommitOutcome.lost
    assert not r.exists(keys.messages("s")), "nothing appended"
    assert {k: r.dump(k) for k in before} == before, "job, FIFO, session and lease untouched"
    assert r.hget(keys.job(job_id), "status") == "running" and r.ttl(keys.job(job_id)) == -1


def test_commit_ok_names_the_next_head_and_released_gives_the_lease_up(r, keys, machine):
    first, second = queue_job(machine, "s"), queue_job(machine, "s")
    taken = start(machine, "s")
    r.set(keys.checkpoint(first), "{}")
    committed = machine.commit("s", first, "w1", "succeeded", turn("one"),
                               Usage(prompt_tokens=2, completion_tokens=3, total_tokens=5, model="m"),
                               taken.created_at, result_json='{"content": "re: one"}')
    assert committed == (CommitOutcome.ok, second)
    assert [Message.model_validate_json(m).content for m in r.lrange(keys.messages("s"), 0, -1)] == ["one", "re: one"]
    assert r.hgetall(keys.job(first))["status"] == "succeeded" and 0 < r.ttl(keys.job(first)) <= TTL
    assert not r.exists(keys.checkpoint(first)) and r.get(keys.lease("s")) == "w1"
    meta = r.hgetall(keys.session("s"))
    assert (meta["total_tokens"], meta["model"]) == ("5", "m")
    assert r.zscore(keys.sessions, "s") == listing_score(taken.created_at), "the commit re-lists the session"
    machine.take("s", "w1", second, 3)
    assert machine.commit("s", second, "w1", "failed", [], Usage(), error_json='{"type": "X"}').outcome \
        is CommitOutcome.released
    assert not r.exists(keys.lease("s")) and not r.exists(keys.fifo("s"))


def test_commit_refuses_a_job_that_is_not_the_running_head(r, keys, machine):
    first, second = queue_job(machine, "s"), queue_job(machine, "s")
    start(machine, "s")
    assert machine.commit("s", second, "w1", "succeeded", turn("x"), Usage()).outcome is CommitOutcome.moved
    r.hset(keys.job(first), "status", "queued")
    assert machine.commit("s", first, "w1", "succeeded", turn("x"), Usage()).outcome is CommitOutcome.not_running
    assert not r.exists(keys.messages("s"))


def test_release_gives_the_lease_up_with_work_left(r, keys, machine):
    queue_job(machine, "s")
    queue_job(machine, "s")
    start(machine, "s")
    assert machine.release("s", "stale") is None
    assert machine.release("s", "w1") == 2 and not r.exists(keys.lease("s"))
    r.delete(keys.fifo("s"))
    r.set(keys.lease("s"), "w1")
    assert machine.release("s", "w1") == 0


def test_renew_extends_held_leases_and_reports_lost_ones(r, keys, machine):
    r.set(keys.lease("a"), "mine", px=1000)
    r.set(keys.lease("b"), "theirs", px=1000)
    lost = machine.renew([(keys.lease("a"), "mine"), (keys.lease("b"), "mine")], 60_000)
    assert lost == [keys.lease("b")]
    assert r.pttl(keys.lease("a")) > 30_000 and r.pttl(keys.lease("b")) <= 1000


# --- the event log: take, emit, commit, cancel, interrupt ------------------------------------

def events_of(machine: SessionMachine, job_id: str) -> list:
    from chatq.tasks.events import EventLog

    return EventLog(machine.r, machine.keys).read(job_id)


def test_the_event_log_counts_on_over_attempts_and_ends_with_the_finished_record(r, keys, machine):
    from chatq.tasks.job_store import decode_job

    parts = [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    job_id = queue_job(machine, "s", {"message": parts, "params": {"temperature": 0, "stop": ["\n"]}})
    start(machine, "s", token="w1", lease_ms=50)
    assert machine.emit("s", job_id, "w1", [("message.delta", '{"text":"par"}')]) == (True, "")
    time.sleep(0.1)  # the first worker's lease runs out
    assert machine.emit("s", job_id, "w1", [("message.delta", '{"text":"zombie"}')]) == (False, ""), \
        "a worker that lost the session writes nothing"
    taken = start(machine, "s", token="w2")
    assert machine.emit("s", job_id, "w2", [("message.delta", '{"text":"whole"}')]) == (True, "")
    result = JobResult(content="re: x", message=turn("x")[1], usage=Usage(total_tokens=3))
    machine.commit("s", job_id, "w2", "succeeded", turn("x"), Usage(total_tokens=3), taken.created_at,
                   result_json=result.model_dump_json(), events=[("message.delta", '{"text":"tail"}')])
    events = events_of(machine, job_id)
    assert [(e.seq, e.type) for e in events] == [(1, "job.started"), (2, "message.delta"), (3, "job.restarted"),
                                                 (4, "message.delta"), (5, "message.delta"), (6, "job.succeeded")]
    assert events[2].data == {"attempt": 2, "worker": "w"} and events[4].data == {"text": "tail"}
    assert [m.content for m in SessionStore(r, keys).get("s").messages] == ["x", "re: x"], \
        "the run's last events and its turn commit together"
    record = decode_job(r.hgetall(keys.job(job_id)))
    assert Job.model_validate(events[5].data) == record and record.result == result, \
        "the terminal event is the record, every field as stored"
    assert events[5].data["message"] == parts and events[5].data["params"] == {"temperature": 0, "stop": ["\n"]}, \
        "content parts (stored apart, as JSON) and params are spliced in as the job's own fields"
    assert 0 < r.ttl(keys.events(job_id)) <= TTL, "the log expires with the record"


def test_emit_tells_the_writer_its_job_was_asked_to_stop(keys, machine):
    job_id = queue_job(machine, "s")
    start(machine, "s")
    machine.cancel(job_id, "s")
    assert machine.emit("s", job_id, "w1", []) == (True, "keep")


def test_emit_many_fences_each_job_in_one_round_trip_and_reloads_a_script_the_server_lost(private_redis):
    """The worker's event flusher: one pipeline of emits, each fenced by its own session's lease; a
    server without the script (fresh, restarted, flushed) gets it loaded and the calls sent again."""
    import asyncio

    from chatq.tasks.redis_pool import get_async_redis
    from chatq.tasks.session_machine import AsyncSessionMachine, emit_many

    url = private_redis.start().url()
    r = redis.Redis.from_url(url, decode_responses=True)
    keys = Keys("em")
    machine = SessionMachine(r, keys, result_ttl=TTL)
    running, stopping, lost = (queue_job(machine, sid) for sid in ("a", "b", "c"))
    for sid in ("a", "b", "c"):
        start(machine, sid)
    machine.cancel(stopping, "b")

    async def flush(text: str) -> list:
        ar = get_async_redis(url, 2, None)
        am = AsyncSessionMachine(ar, keys)
        writes = [(am, *am.calls.emit(sid, job_id, token, [("message.delta", f'{{"text":"{text}"}}')]))
                  for sid, job_id, token in (("a", running, "w1"), ("b", stopping, "w1"), ("c", lost, "w2"))]
        try:
            return await emit_many(ar, writes)
        finally:
            await ar.aclose()

    assert not r.script_exists(scripts.load(r, "emit").sha)[0]
    assert asyncio.run(flush("one")) == [(True, ""), (True, "keep"), (False, "")], \
        "written; written, and told the job was asked to stop; refused: not the lease holder"
    r.script_flush()
    assert asyncio.run(flush("two")) == [(True, ""), (True, "keep"), (False, "")]
    for job_id in (running, stopping):
        assert [(e.seq, e.type, e.data) for e in events_of(machine, job_id)] == [
            (1, "job.started", {"attempt": 1, "worker": "w"}), (2, "message.delta", {"text": "one"}),
            (3, "message.delta", {"text": "two"})]
    assert [e.type for e in events_of(machine, lost)] == ["job.started"]


def test_cancel_of_a_queued_job_ends_its_log(keys, machine):
    first, second = queue_job(machine, "s"), queue_job(machine, "s")
    machine.cancel(second, "s")
    assert [e.type for e in events_of(machine, second)] == ["job.cancelled"]
    assert events_of(machine, first) == []


def test_interrupting_submit_stops_the_running_job_and_cancels_the_queued(r, keys, machine):
    running, queued = queue_job(machine, "s"), queue_job(machine, "s")
    start(machine, "s")
    job = Job(job_id=new_job_id("s"), session_id="s", message="now")
    stale = machine._submit(keys=[keys.job(job.job_id), keys.fifo("s"), keys.lease("s"), keys.session("s"),
                                  keys.messages("s"), keys.job(running), keys.events(running)],
                            args=[job.job_id, "rollback", "now", "", TTL, 100, keys.done_channel(""),
                                  keys.cancel_channel, 1, "", "", running, "message", "now"])
    assert stale == ["stale"] and not r.exists(keys.job(job.job_id)), "a FIFO read before it moved: nothing written"
    submitted = machine.interrupt(job.job_id, "s", encode_job(job), "rollback")
    assert submitted == (SubmitOutcome.queued_behind, [queued])
    assert r.lrange(keys.fifo("s"), 0, -1) == [running, job.job_id]
    assert r.hget(keys.job(running), "cancel") == "rollback" and r.hget(keys.job(running), "status") == "running"
    assert r.hget(keys.job(queued), "status") == "cancelled"
    assert [e.type for e in events_of(machine, queued)] == ["job.cancelled"]


# --- the fleet's indexes: announce, unindex, sweep --------------------------------------------

def test_announce_scores_only_grow_so_a_compare_and_delete_never_drops_a_newer_mark(r, keys, machine):
    pipe = r.pipeline()
    for _ in range(5):
        machine.announce("s", utcnow(), pipe)
    scores = pipe.execute()
    assert scores == sorted(set(scores)), "strictly increasing, even within one millisecond"
    unindex = scripts.load(r, "unindex")
    assert unindex(keys=[keys.pending], args=["s", scores[0]]) == 0, "renewed since: kept"
    assert unindex(keys=[keys.pending], args=["s", scores[-1], "nobody", 1]) == 1
    assert r.zcard(keys.pending) == 0


def test_sweep_wakes_stalled_sessions_renews_busy_ones_and_drops_idle_marks(r, keys, machine):
    queue_job(machine, "stalled")
    queue_job(machine, "held")
    r.set(keys.lease("held"), "w", px=5000)
    queue_job(machine, "idle")
    start(machine, "idle")
    r.delete(keys.fifo("idle"))
    assert machine.sweep(60, 600) == [], "marks younger than that are left alone"
    assert machine.sweep(0, 600) == ["stalled"]
    assert set(r.zrange(keys.pending, 0, -1)) == {"stalled", "held"}, "the idle session's mark is dropped"
    assert r.hkeys(keys.woken) == ["stalled"], "what the sweeper woke is kept for its back-off"


def test_sweep_script_drops_an_idle_mark_only_if_unchanged_and_wakes_a_stalled_state_once(r, keys):
    sweep = scripts.load(r, "sweep")
    r.zadd(keys.pending, {"idle": 1000, "renewed": 2000, "stalled": 1000})
    looks = ["idle", 1000, "idle", "renewed", 1000, "idle", "stalled", 1000, "J:1"]
    assert sweep(keys=[keys.pending, keys.woken], args=[5000, 4000, 60_000, *looks]) == ["stalled"]
    assert r.zrange(keys.pending, 0, -1, withscores=True) == [("renewed", 2000), ("stalled", 5000)], \
        "a mark renewed since the look stays; a stalled session's is renewed"
    assert r.hget(keys.woken, "stalled") == "4000 9000 J:1"
    assert sweep(keys=[keys.pending, keys.woken], args=[5001, 4000, 60_000, "stalled", 5000, "J:1"]) == [], \
        "a sweep overlapping the last one does not wake it twice"
    assert sweep(keys=[keys.pending, keys.woken], args=[9000, 4000, 6000, "stalled", 5001, "J:1"]) == ["stalled"]
    assert r.hget(keys.woken, "stalled") == "6000 15000 J:1", "the back-off doubled, up to its cap"
    assert sweep(keys=[keys.pending, keys.woken], args=[9001, 4000, 6000, "stalled", 9000, "J:2"]) == ["stalled"]
    assert r.hget(keys.woken, "stalled") == "4000 13001 J:2", "another state: woken at once, back-off anew"


def test_count_active_sums_the_fifos_of_pending_sessions(r, keys, machine):
    for _ in range(3):
        queue_job(machine, "a")
    queue_job(machine, "b")
    start(machine, "b")
    assert machine.count_active() == (4, 1)
    assert machine.count_active(limit=2)[0] >= 2


# --- sessions: create, delete, listing --------------------------------------------------------

def test_create_then_exists_and_sets_its_own_retention(r, keys):
    store = SessionStore(r, keys, session_ttl=100)
    assert store.create("s") is True
    assert store.create("s", ttl=0) is False
    assert r.hget(keys.session("s"), "ttl") == "0" and r.ttl(keys.session("s")) == -1, "0 keeps it"
    store.create("s", ttl=5)
    assert 0 < r.ttl(keys.session("s")) <= 5 and store.get("s").ttl == 5
    assert store.list() == ["s"]


def test_delete_outcomes(r, keys, machine):
    store = SessionStore(r, keys)
    assert store.delete("nobody") is False
    queue_job(machine, "busy")
    assert store.delete("busy") is None and r.exists(keys.session("busy"))
    store.create("idle")
    r.rpush(keys.messages("idle"), "{}")
    assert store.delete("idle") is True
    assert not r.exists(keys.session("idle"), keys.messages("idle")) and store.list() == ["busy"]


def test_listing_drops_entries_of_sessions_that_expired(r, keys):
    store = SessionStore(r, keys)
    for sid in ("a", "b", "c"):
        store.create(sid)
    r.delete(keys.session("b"))  # as an expiry does
    assert store.page(0, 10) == (["a", "c"], 2)
    r.delete(keys.session("c"))
    assert store.prune(0, 10) == 0 and r.zrange(keys.sessions, 0, -1) == ["a"]


# --- the other scripts: hand-offs, webhooks, rate limit ---------------------------------------

def test_handoff_scripts(r, keys):
    wait, give, stop = (scripts.load(r, f"handoff_{n}") for n in ("wait", "give", "stop"))
    idle, handed = keys.idle("q"), keys.handed("q")
    assert give(keys=[idle, handed], args=["ns s j"]) == 0, "nobody waits"
    assert wait(keys=[idle], args=[60_000, "p1#1", ""]) == 1
    assert give(keys=[idle, handed], args=["ns s j"]) == 1
    assert give(keys=[idle, handed], args=["ns t k"]) == 0, "as many handed as it has room for"
    wait(keys=[idle], args=[60_000, "p1#3", "p1#1"])
    assert r.zrange(idle, 0, -1) == ["p1#3"], "a renewal replaces the process's registration"
    assert wait(keys=[idle], args=[60_000, "p2#2", ""]) == 1
    assert [give(keys=[idle, handed], args=[f"ns s{n} j"]) for n in range(5)] == [1, 1, 1, 1, 0], "room: 3 + 2"
    r.delete(handed)
    r.delete(idle)
    wait(keys=[idle], args=[1, "w2#5", ""])
    time.sleep(0.01)
    assert give(keys=[idle, handed], args=["ns s j"]) == 0, "a registration past its deadline is not counted"
    wait(keys=[idle], args=[60_000, "w3#4", ""])
    assert stop(keys=[idle, keys.stop("host:1")], args=["0", "w3#4"]) == 1
    assert r.zcard(idle) == 0 and not r.exists(keys.stop("host:1")), "a pause wakes nobody"
    wait(keys=[idle], args=[60_000, "w3#4", ""])
    assert stop(keys=[idle, keys.stop("host:1")], args=["1", "w3#4"]) == 1
    assert r.zcard(idle) == 0 and r.lrange(keys.stop("host:1"), 0, -1) == ["-"]


def test_webhook_claim_once_and_record_only_while_the_job_exists(r, keys):
    claim, record = scripts.load(r, "webhook_claim"), scripts.load(r, "webhook_record")
    job = keys.job(new_job_id("s"))
    assert claim(keys=[job], args=["webhook", '{"status": "pending"}']) is None, "no callback URL"
    r.hset(job, "callback_url", "http://x")
    assert claim(keys=[job], args=["webhook", '{"status": "pending"}']) == "http://x"
    assert claim(keys=[job], args=["webhook", '{"status": "pending"}']) is None, "claimed before"
    assert record(keys=[job], args=["webhook", "{}"]) == 1
    r.delete(job)
    assert record(keys=[job], args=["webhook", "{}"]) == 0 and not r.exists(job)


def test_rate_limit_admits_within_the_budget(r, keys):
    acquire = scripts.load(r, "rate_limit")
    window = list(keys.rate("m", 1))
    assert [acquire(keys=window, args=[2, 0, 10, 60]) for _ in range(3)] == [0, 0, 1]
    tokens = list(keys.rate("m", 2))
    assert [acquire(keys=tokens, args=[0, 15, 10, 60]) for _ in range(2)] == [0, 1]


# --- the client's steps that a cluster splits in two ------------------------------------------

def test_an_idempotency_key_claimed_by_a_producer_that_died_is_written_by_the_next(client):
    """The claim (SET NX) and the job (the submit script) are two calls; a producer that died
    between them left a claim without a job. A retry writes the job under the claimed IDs, once."""
    key, sid = f"died-{uuid.uuid4().hex}", f"s-{uuid.uuid4().hex[:8]}"
    claimed = new_job_id(sid)
    client.r.set(client.keys.idempotency(key), f"{claimed} {sid}", ex=60)
    job = client.submit("once, after all", idempotency_key=key)
    assert (job.job_id, job.session_id) == (claimed, sid)
    again = client.submit("once, after all", idempotency_key=key)
    assert again.job_id == claimed
    assert client.wait(claimed, 30).status == "succeeded"
    assert [m.content for m in client.get_session(sid).messages][0] == "once, after all"
    assert len(client.get_session(sid).messages) == 2
