"""`chatq worker` as a user starts it: a process per core under one command, full processes that
leave the rest of a backlog to the broker, a node stopped and repaired as one."""

from __future__ import annotations

import os
import signal
import time
import uuid

import psutil

from chatq.testing.server import TestServer

from .conftest import Fleet, wait_all


def children(proc) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children()


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


def test_a_node_of_processes_shares_the_work_and_replaces_a_dead_one(make_fleet):
    fleet = make_fleet()
    fleet.env["CHATQ_PROCESSES"] = "2"
    node = fleet.start_worker(None)
    procs = wait_for(lambda: len(children(node)) == 2 and children(node), what="two worker processes")
    client = fleet.client()
    tag = uuid.uuid4().hex[:6]
    jobs = [client.submit(f"hello {tag} {i}", f"node-{tag}-{i}").job_id for i in range(40)]
    done = wait_all(client, jobs, timeout=60)
    assert {j.status for j in done} == {"succeeded"}, fleet.logs()
    ran = {j.worker.rsplit(":", 1)[1] for j in done}
    assert ran <= {str(p.pid) for p in procs}
    os.kill(procs[0].pid, signal.SIGKILL)
    replaced = wait_for(lambda: procs[0].pid not in {p.pid for p in children(node)} and len(children(node)) == 2,
                        what="the dead process replaced")
    assert replaced and node.poll() is None
    assert client.chat(f"after the loss {tag}", f"after-{tag}", timeout=60).status == "succeeded", fleet.logs()
    node.send_signal(signal.SIGTERM)  # the node's warm shutdown reaches every process
    assert node.wait(30) == 0
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs[1:])


def test_a_full_process_leaves_the_rest_of_a_backlog_in_the_broker(tmp_path):
    """Room for 3: never more than 3 calls at once; the other sessions wait their turn, all finish."""
    with TestServer(latency=0.5) as slow:
        fleet = Fleet(tmp_path, slow.base_url)
        try:
            fleet.start_worker(3)
            client = fleet.client()
            assert client.chat("warm up", timeout=60).status == "succeeded"
            slow.reset_stats()
            jobs = [client.submit(f"queued {n}").job_id for n in range(15)]
            done = wait_all(client, jobs, timeout=120)
            assert {j.status for j in done} == {"succeeded"}, fleet.logs()
            assert slow.stats["requests"] == 15 and slow.stats["max_in_flight"] == 3, slow.stats
        finally:
            fleet.stop()
