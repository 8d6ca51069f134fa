"""A worker started the ordinary Celery way (`celery -A chatq.worker worker`) starts like `chatq worker`:
agents registered, sweeper and lease keeper running, warm shutdown releasing its sessions."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from .conftest import ROOT, wait_all
from .test_core import expected_history, history_pairs
from .test_crash_recovery import _wait_for_running, assert_released_after_current_turn


def sid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def holder_and_other(fleet, client, jobs: list[str], workers: list) -> tuple:
    """Once a job runs: the worker process running it, and the other one."""
    _wait_for_running(client, jobs)
    running = next(j for j in client.jobs.get_many(jobs) if j.status == "running")
    holder = next(w for w in workers if running.worker.endswith(f":{w.pid}"))
    return holder, next(w for w in workers if w is not holder)


@pytest.mark.parametrize("how", ["celery", "chatq"])
def test_a_killed_workers_session_resumes_within_the_recovery_time(make_fleet, how):
    fleet = make_fleet()
    client = fleet.client()
    workers = [fleet.start_worker(4, how=how) for _ in range(2)]
    for w in workers:
        fleet.wait_ready(w)
    assert client.r.sismember(client.keys.agents, "default"), "the workers did not register their agents"
    s = sid(f"resume-{how}")
    texts = [f"{s} turn {i} [[stall:0.5]]" for i in range(6)]
    jobs = [client.submit(t, s).job_id for t in texts]
    doomed, survivor = holder_and_other(fleet, client, jobs, workers)
    fleet.kill(doomed)
    killed_at = time.monotonic()
    interrupted = next((j for j in client.jobs.get_many(jobs) if j.status == "running"), None)
    assert interrupted, "the kill should land mid-job"
    # The documented bound: lease + 2 x sweep interval (2 s + 1 s here), noticed generously.
    bound = 2 + 2 * 0.5 + 7
    while (job := client.get(interrupted.job_id)).attempts < 2:
        assert time.monotonic() - killed_at < bound, f"not resumed within {bound} s:\n{fleet.logs()}"
        time.sleep(0.05)
    assert job.worker.endswith(f":{survivor.pid}")
    done = wait_all(client, jobs, timeout=60)
    assert all(j.status == "succeeded" for j in done), fleet.logs()
    assert history_pairs(client, s) == expected_history(texts)


def test_celery_worker_warm_shutdown_releases_the_rest_of_a_session(make_fleet):
    fleet = make_fleet()
    client = fleet.client()
    workers = [fleet.start_worker(4, how="celery") for _ in range(2)]
    for w in workers:
        fleet.wait_ready(w)
    s = sid("release")
    texts = [f"{s} turn {i} [[stall:0.5]]" for i in range(6)]
    jobs = [client.submit(t, s).job_id for t in texts]
    first, second = holder_and_other(fleet, client, jobs, workers)
    first.terminate()  # SIGTERM: Celery's warm shutdown
    assert first.wait(30) == 0
    assert_released_after_current_turn(fleet, client, s, texts, jobs, first, second)


@pytest.mark.parametrize("flags,agents,fragment", [
    (["-P", "processes"], None, "the prefork pool cannot run chatq's runtime"),
    ([], '[agents.default]\ntools = ["no_such_module:fn"]\n', "no_such_module:fn"),
], ids=["forking-pool", "tool-does-not-import"])
def test_celery_worker_refuses_what_cannot_work_at_start_up(make_fleet, tmp_path, flags, agents, fragment):
    fleet = make_fleet()
    env = dict(fleet.env)
    if agents:
        (tmp_path / "agents.toml").write_text(agents)
        env["CHATQ_AGENTS_FILE"] = str(tmp_path / "agents.toml")
    out = subprocess.run([sys.executable, "-m", "celery", "-A", "chatq.worker", "worker", *flags],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "error: worker cannot start:" in out.stderr and fragment in out.stderr
    assert "Traceback" not in out.stderr
