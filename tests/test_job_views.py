"""``chatq jobs list`` and ``chatq top`` against real workers: what runs, what waits, what finished."""

from __future__ import annotations

import json
import time
import uuid

from .test_core import run_cli


def test_jobs_list_and_top_show_running_queued_and_finished_jobs(fleet, client):
    s = f"views-{uuid.uuid4().hex[:8]}"
    done = [client.chat(f"fine {i}", session_id=s, timeout=30) for i in range(2)]
    failed = client.chat("[[fault:400]] broken", session_id=s, timeout=30)
    running = client.submit("[[stall:60]] slow", s)  # stopped at the end
    queued = client.submit("after it", s)
    deadline = time.monotonic() + 30
    while client.get(running.job_id).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)

    out = run_cli(fleet, "jobs", "list", "--session", s)
    assert out.returncode == 0, out.stderr
    listed = [(j["job_id"], j["status"]) for j in json.loads(out.stdout)]
    assert listed == [(running.job_id, "running"), (queued.job_id, "queued"), (failed.job_id, "failed"),
                      (done[1].job_id, "succeeded"), (done[0].job_id, "succeeded")], \
        "running first, then queued, then finished newest first"
    only_failed = json.loads(run_cli(fleet, "jobs", "list", "--status", "failed", "--session", s).stdout)
    assert [j["job_id"] for j in only_failed] == [failed.job_id]
    assert json.loads(run_cli(fleet, "jobs", "list", "--limit", "1", "--session", s).stdout)[0]["job_id"] == \
        running.job_id
    assert run_cli(fleet, "jobs", "list", "--status", "lost").returncode == 2

    frame = json.loads(run_cli(fleet, "top", "--once", "--json", "--window", "60").stdout)
    assert frame["running"] >= 1 and frame["queued"] >= 1
    assert frame["finished"].get("succeeded", 0) >= 2 and frame["errors"].get("ProviderHTTP400", 0) >= 1
    assert running.job_id in [j["job_id"] for j in frame["longest_running"]]
    assert frame["waiting_processes"], "the fleet's processes with room are waiting for hand-offs"
    plain = run_cli(fleet, "top", "--once")
    assert plain.returncode == 0 and "chatq top" in plain.stdout and running.job_id in plain.stdout
    client.cancel(running.job_id)
    assert client.wait(queued.job_id, 30).status == "succeeded"
