"""The task wiring under pytest-celery's classic fixtures: an in-process worker on the real Redis.

Proves `chatq.run_session` is an ordinary Celery task any app can run (it is a shared task), that
such a worker starts chatq's runner through the worker signals like `celery -A chatq.worker worker`,
and that the embedded offline model serves a worker with no configuration at all.
"""

from __future__ import annotations

import uuid

import pytest

from chatq.tasks.client import ChatClient
from chatq.tasks.settings import get_settings

from .conftest import BROKER_URL, REDIS_URL
from .test_core import expected_history, history_pairs

QUEUE = "chatq-pytest-celery"


@pytest.fixture(scope="session")
def celery_config():
    return {"broker_url": BROKER_URL, "result_backend": BROKER_URL, "task_serializer": "json",
            "accept_content": ["json"], "task_default_queue": QUEUE}


@pytest.fixture(scope="session")
def celery_includes():
    return ["chatq.worker.celery"]


@pytest.fixture(scope="session")
def celery_worker_pool():
    return "threads"


@pytest.fixture(scope="session")
def chatq_worker(request):
    """pytest-celery's session worker, started while the environment names a namespace of its own:
    its runner reads its settings at worker_init, like any worker's. Yields those settings."""
    env = pytest.MonkeyPatch()
    for name, value in {"CHATQ_REDIS_URL": REDIS_URL, "CHATQ_BROKER_URL": BROKER_URL, "CHATQ_QUEUE": QUEUE,
                        "CHATQ_NAMESPACE": f"pc{uuid.uuid4().hex[:8]}"}.items():
        env.setenv(name, value)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        request.getfixturevalue("celery_session_worker")
    finally:
        env.undo()
        get_settings.cache_clear()
    return settings


def test_in_process_worker_runs_ordered_turns(chatq_worker, celery_session_app):
    from chatq.worker import celery as chatq_celery

    assert "chatq.run_session" in celery_session_app.tasks
    runtime = chatq_celery._runtime
    assert runtime is not None and runtime.settings.namespace == chatq_worker.namespace, "worker_init did not run"
    client = ChatClient(settings=chatq_worker)
    assert "default" in client.r.smembers(client.keys.agents)
    s = "pytest-celery-session"
    texts = ["My name is Dana", "What's my name?", "third"]
    jobs = [client.submit(t, s) for t in texts]
    done = [client.wait(j.job_id, 30) for j in jobs]
    assert [j.status for j in done] == ["succeeded"] * 3
    assert done[1].result.content == "Your name is Dana."
    assert done[0].result.usage.model.startswith("chatq-offline")
    assert history_pairs(client, s) == expected_history(texts)
    client.r.delete(*client.r.keys(f"{client.namespace}:*"))
