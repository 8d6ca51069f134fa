"""Workers killed with SIGKILL: no job lost, no turn appended twice, no session stuck."""

from __future__ import annotations

import time
import uuid

from .conftest import wait_all
from .test_core import expected_history, history_pairs


def _wait_for_running(client, job_ids: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(j and j.status == "running" for j in client.jobs.get_many(job_ids)):
            return
        time.sleep(0.05)
    raise AssertionError("no job started")


def sigkill_mid_run_loses_nothing(fleet, sessions: int = 6, turns: int = 5) -> None:
    """Kill -9 a worker mid-job, start another: every job succeeds, every history is whole and in order,
    and each interrupted job ran exactly twice (its lease ran out; the sweeper woke its session). Shared
    with the modules that run it on other stores and brokers."""
    doomed = fleet.start_worker(20)
    client = fleet.client()
    names = [f"crash-{uuid.uuid4().hex[:8]}" for _ in range(sessions)]
    texts = {s: [f"{s} turn {i} [[stall:0.4]]" for i in range(turns)] for s in names}
    jobs = [client.submit(t, s).job_id for s in names for t in texts[s]]
    _wait_for_running(client, jobs)
    time.sleep(0.6)
    fleet.kill(doomed)
    interrupted = [j for j in client.jobs.get_many(jobs) if j.status == "running"]
    assert interrupted, "the kill should land mid-job"
    fleet.start_worker(20)
    done = wait_all(client, jobs, timeout=90)
    assert all(j.status == "succeeded" for j in done), fleet.logs()
    for s in names:
        assert history_pairs(client, s) == expected_history(texts[s])
    retried = {j.job_id: j for j in done}
    assert all(retried[j.job_id].attempts == 2 for j in interrupted)


def test_sigkill_mid_run_loses_nothing_and_appends_nothing_twice(make_fleet):
    sigkill_mid_run_loses_nothing(make_fleet())


def test_poison_job_fails_after_bounded_attempts_and_session_moves_on(make_fleet, tmp_path):
    agents = tmp_path / "agents.toml"
    agents.write_text('[agents.default]\ntools = ["tests.tools_for_tests:die"]\n')
    fleet = make_fleet(agents_file=str(agents), max_attempts="2")
    client = fleet.client()
    s = f"poison-{uuid.uuid4().hex[:8]}"
    poison = client.submit("[[tool:die {}]]", s)
    after = client.submit("still here?", s)
    deadline = time.monotonic() + 90
    worker = fleet.start_worker(4)
    restarts = 0
    while time.monotonic() < deadline and not client.get(poison.job_id).status.finished:
        if worker.poll() is not None:
            restarts += 1
            worker = fleet.start_worker(4)
        time.sleep(0.2)
    job = client.wait(poison.job_id, 1)
    assert job.status == "failed" and job.error.type == "WorkerLost", fleet.logs()
    assert restarts == 2
    assert client.wait(after.job_id, 30).status == "succeeded"
    assert [m.content for m in client.get_session(s).messages][0] == "still here?"


def test_tool_results_are_checkpointed_so_side_effects_happen_once(make_fleet, tmp_path):
    agents = tmp_path / "agents.toml"
    agents.write_text('[agents.default]\ntools = ["tests.tools_for_tests:record", '
                      '"tests.tools_for_tests:die_once"]\n')
    fleet = make_fleet(agents_file=str(agents))
    client = fleet.client()
    key = uuid.uuid4().hex[:8]
    worker = fleet.start_worker(4)
    job = client.submit(f'[[tool:record {{"key": "{key}"}}]] [[tool:die_once {{"key": "{key}"}}]]')
    worker.wait(60)  # die_once kills it after record ran and was checkpointed
    fleet.start_worker(4)
    done = client.wait(job.job_id, 60)
    assert done.status == "succeeded" and done.attempts == 2, fleet.logs()
    assert done.result.content == "Tool results: record=recorded 1; die_once=survived"
    assert client.r.get(f"{fleet.settings.namespace}:test:{key}") == "1"
    roles = [m.role for m in client.get_session(done.session_id).messages]
    assert roles == ["user", "assistant", "tool", "tool", "assistant"]


def test_warm_shutdown_hands_the_rest_of_a_session_to_another_worker(make_fleet):
    fleet = make_fleet()
    first = fleet.start_worker(4)
    client = fleet.client()
    s = f"handoff-{uuid.uuid4().hex[:8]}"
    texts = [f"{s} turn {i} [[stall:0.5]]" for i in range(8)]
    jobs = [client.submit(t, s).job_id for t in texts]
    _wait_for_running(client, jobs)
    first.terminate()  # SIGTERM: Celery's warm shutdown
    first.wait(30)
    second = fleet.start_worker(4)
    assert_released_after_current_turn(fleet, client, s, texts, jobs, first, second)


def test_duplicate_wake_ups_leave_a_long_job_its_lease(client, fake_openai):
    """A wake-up for a session someone else holds must not stop the holder's lease renewals: the job
    outlives the 2 s lease, and losing it would run the job (and its provider call) twice."""
    s = f"dup-{uuid.uuid4().hex[:8]}"
    job = client.submit(f"long one [[stall:4]] {s}", s)
    _wait_for_running(client, [job.job_id])
    for _ in range(3):
        client.wake(s)
        time.sleep(0.3)
    done = client.wait(job.job_id, timeout=30)
    assert done.status == "succeeded" and done.attempts == 1, done
    assert len(fake_openai.recorded(s)) == 1


def assert_released_after_current_turn(fleet, client, s, texts, jobs, first, second) -> None:
    """After ``first``'s warm shutdown: every turn succeeded, in order, the first on ``first`` and the
    last on ``second``, and ``first`` stopped after its current turn instead of draining the session."""
    done = wait_all(client, jobs, timeout=60)
    assert all(j.status == "succeeded" for j in done), fleet.logs()
    assert history_pairs(client, s) == expected_history(texts)
    ran_on = [j.worker.rsplit(":", 1)[1] for j in done]
    assert ran_on[0] == str(first.pid) and ran_on[-1] == str(second.pid)
    assert ran_on.count(str(first.pid)) < len(texts) // 2, "the first worker should stop after its current turn"
