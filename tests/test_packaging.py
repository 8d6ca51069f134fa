"""What a newcomer touches first: the README's commands, the demo, docker-compose.yml, .ci/run."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import yaml

from .conftest import ROOT


def test_readme_opens_with_the_demo_and_test_commands():
    first = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()[:2]]
    assert first[0].startswith("make demo") and first[1].startswith("make test")
    makefile = (ROOT / "Makefile").read_text()
    assert "chatq demo" in makefile and "pytest" in makefile
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_docker_compose_describes_redis_and_scalable_workers():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    worker_cmd = " ".join(services["worker"]["command"])
    assert "chatq worker" in worker_cmd
    assert services["worker"]["environment"]["CHATQ_REDIS_URL"].startswith("redis://redis:6379")
    assert "replicas" in services["worker"]["deploy"]


def test_demo_runs_on_the_embedded_model(make_fleet):
    fleet = make_fleet(online=False)
    out = subprocess.run([sys.executable, "-m", "chatq", "demo"], cwd=ROOT, env=fleet.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "embedded offline model" in out.stdout and "demo ok" in out.stdout
    assert "Your name is Alice." in out.stdout and "I don't know your name." in out.stdout
    assert "Tool results: add=42.0" in out.stdout
    assert out.stdout.count("succeeded") == 5


def test_demo_stops_waiting_for_a_job_that_expired(make_fleet):
    from chatq.demo import poll

    client = make_fleet(online=False).client()  # no worker: jobs stay queued
    queued, expired = client.submit("still queued"), client.submit("about to expire")
    client.r.delete(client.keys.job(expired.job_id))
    started = time.monotonic()
    assert poll(client, [expired.job_id], timeout=60) == set()
    assert time.monotonic() - started < 10, "an expired job kept the demo polling"
    assert poll(client, [queued.job_id, expired.job_id], timeout=0.3) == {queued.job_id}


def test_readme_file_table_matches_the_tree():
    readme = (ROOT / "README.md").read_text()
    table = [line for line in readme.split("| file | holds |", 1)[1].split("\n\n", 1)[0].splitlines()]
    named = set(re.findall(r"`([\w/]+\.py)`", "\n".join(table)))
    modules = {str(p.relative_to(ROOT)) for d in ("chatq", "tasks", "worker", "api") for p in (ROOT / d).rglob("*.py")
               if p.name != "__init__.py" or p.parent.name == "chatq" and p.parent.parent == ROOT}
    assert modules - named == set(), "modules the README's file table does not mention"
    assert {n for n in named if not (ROOT / n).exists()} == set(), "files the README's table names that do not exist"


def test_the_multinode_compose_file_puts_the_store_on_a_cluster_and_the_broker_on_rabbitmq():
    from chatq.tasks.redis_pool import cluster_nodes

    override = yaml.safe_load((ROOT / "docker-compose.multinode.yml").read_text())
    services = override["services"]
    nodes = [name for name in services if name.startswith("redis-") and name != "redis-cluster-init"]
    assert len(nodes) == 3 and all("--cluster-enabled yes" in " ".join(services[n]["command"]) for n in nodes)
    assert "--cluster create" in " ".join(services["redis-cluster-init"]["command"])
    for role in ("worker", "api"):
        env = services[role]["environment"]
        assert env["CHATQ_REDIS_URL"] == "redis+cluster://" + ",".join(f"{n}:6379" for n in nodes) + "/"
        assert [host for host, _ in cluster_nodes(env["CHATQ_REDIS_URL"])[1]] == nodes, "a URL chatq reads"
        assert env["CHATQ_BROKER_URL"].startswith("amqp://") and "@rabbitmq:5672" in env["CHATQ_BROKER_URL"]
    assert "consumer_timeout" in services["rabbitmq"]["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
