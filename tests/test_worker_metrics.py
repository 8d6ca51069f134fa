"""A worker process's Prometheus metrics, scraped from a real `chatq worker` after known jobs."""

from __future__ import annotations

import socket
import time
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive ports that are all free now: a node's processes serve the
    metrics port, the port + 1... (a lone free port's neighbour may be another socket's)."""
    for _ in range(100):
        first, held = free_port(), []
        try:
            for i in range(n):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", first + i))
            return first
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise AssertionError(f"no {n} consecutive free ports")


def scrape(port: int) -> dict[str, dict[tuple, float]]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10, trust_env=False).text
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def total(samples: dict[tuple, float], **labels: str) -> float:
    return sum(v for k, v in samples.items() if all((name, value) in k for name, value in labels.items()))


def test_a_worker_counts_its_jobs_by_status_error_and_tokens(make_fleet):
    port = free_port()
    fleet = make_fleet(metrics_port=str(port))
    fleet.wait_ready(fleet.start_worker(8))
    client = fleet.client()
    s = f"metrics-{uuid.uuid4().hex[:8]}"
    ok = [client.chat(f"hello {i}", session_id=s, timeout=30) for i in range(2)]
    failed = client.chat("[[fault:400]] no", session_id=s, timeout=30)
    stalled = client.submit("[[stall:10]] stop me", s)
    deadline = time.monotonic() + 30
    while client.get(stalled.job_id).status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.cancel(stalled.job_id)
    cancelled = client.wait(stalled.job_id, 10)
    assert [j.status for j in ok] + [failed.status, cancelled.status] == ["succeeded"] * 2 + ["failed", "cancelled"]

    m = scrape(port)
    jobs = m["chatq_jobs_total"]
    assert total(jobs, status="succeeded") == 2
    assert total(jobs, status="failed", error="ProviderHTTP400") == 1
    assert total(jobs, status="cancelled") == 1
    assert total(m["chatq_cancels_total"], mode="keep") == 1
    assert total(m["chatq_job_run_seconds_count"]) == 4
    assert total(m["chatq_job_queue_wait_seconds_count"]) == 4
    assert total(m["chatq_tokens_total"], kind="completion") == sum(j.result.usage.completion_tokens for j in ok)
    assert total(m["chatq_provider_call_seconds_count"], outcome="ok") == 2
    assert total(m["chatq_provider_call_seconds_count"], outcome="ProviderHTTP400") == 1
    assert total(m["chatq_provider_first_token_seconds_count"]) >= 2
    assert total(m["chatq_provider_calls_in_flight"]) == 0
    assert total(m["chatq_sessions_running"]) == 0 and total(m["chatq_session_room"]) == 8


def test_each_process_of_a_node_serves_its_own_port(make_fleet):
    port = free_ports(2)
    fleet = make_fleet(metrics_port=str(port), processes="2")
    fleet.wait_ready(fleet.start_worker(None))  # `chatq worker`: two processes, ports port and port + 1
    deadline = time.monotonic() + 30
    while True:
        try:
            rooms = [total(scrape(p)["chatq_session_room"]) for p in (port, port + 1)]
            break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, "both processes serve metrics"
            time.sleep(0.2)
    assert rooms == [5000, 5000]


def test_the_grafana_dashboard_plots_only_metrics_workers_export():
    import json
    import re
    from pathlib import Path

    from chatq.worker.metrics import WorkerMetrics

    dashboard = json.loads((Path(__file__).parent.parent / "deploy" / "grafana-dashboard.json").read_text())
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    exported = {f.name + end for f in WorkerMetrics().registry.collect() for end in suffixes[f.type]}
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\bchatq_[a-z_]+", target["expr"])}
    assert used and used <= exported, used - exported
