"""One default ``chatq worker`` holds far more calls in flight than a thread-per-call worker could.

Counted where the calls arrive, at the test server (its highest number of requests open at once),
never timed: a slow provider, a backlog of single-turn sessions, and one worker started exactly as a
user's bare ``chatq worker``.
"""

from __future__ import annotations

from chatq.testing.server import TestServer

from .conftest import Fleet, wait_all

SESSIONS = 1200
LATENCY = 4.0


def test_one_default_worker_holds_a_thousand_slow_calls_at_once(tmp_path):
    with TestServer(latency=LATENCY) as slow:
        # A lease of its own default length: the fleet's 2 s test lease, on a loaded machine, can run
        # out under a busy process and start a job twice, and this test counts calls.
        fleet = Fleet(tmp_path, slow.base_url, lease_seconds="30")
        try:
            worker = fleet.start_worker(None)  # `chatq worker`, its defaults
            fleet.wait_ready(worker)
            client = fleet.client()
            assert client.chat("warm up", timeout=60).status == "succeeded"
            slow.reset_stats()
            submitted = [client.submit(f"slow call {n}").job_id for n in range(SESSIONS)]
            jobs = wait_all(client, submitted, timeout=300)
            assert {j.status for j in jobs} == {"succeeded"}, {str(j.error) for j in jobs if j.error}
            stats = slow.stats
            assert stats["requests"] == SESSIONS, stats
            # A thread per call held 200 per process; the runtime holds every session it is given.
            assert stats["max_in_flight"] >= 1000, stats
        finally:
            fleet.stop()
