"""The task wiring under pytest-celery's classic fixtures: an in-process worker on the real Redis.

Proves `chatq.run_session` is an ordinary Celery task any app can run (it is a shared task), and
that the embedded offline model serves a worker with no configuration at all.
"""

from __future__ import annotations

import uuid

import pytest

from chatq.tasks.client import ChatClient
from chatq.tasks.settings import get_settings

from .conftest import BROKER_URL
from .test_core import expected_history, history_pairs


@pytest.fixture(scope="session")
def celery_config():
    return {"broker_url": BROKER_URL, "result_backend": BROKER_URL, "task_serializer": "json",
            "accept_content": ["json"], "task_default_queue": "chatq-pytest-celery"}


@pytest.fixture(scope="session")
def celery_includes():
    return ["chatq.tasks.chat_tasks"]


@pytest.fixture(scope="session")
def celery_worker_pool():
    return "threads"


def test_in_process_worker_runs_ordered_turns(celery_session_app, celery_session_worker):
    assert "chatq.run_session" in celery_session_app.tasks
    defaults = get_settings()
    client = ChatClient(settings=defaults.model_copy(update={
        "broker_url": BROKER_URL, "queue": "chatq-pytest-celery", "namespace": f"pc{uuid.uuid4().hex[:8]}"}))
    s = "pytest-celery-session"
    texts = ["My name is Dana", "What's my name?", "third"]
    jobs = [client.submit(t, s) for t in texts]
    done = [client.wait(j.job_id, 30) for j in jobs]
    assert [j.status for j in done] == ["succeeded"] * 3
    assert done[1].result.content == "Your name is Dana."
    assert done[0].result.usage.model.startswith("chatq-offline")
    assert history_pairs(client, s) == expected_history(texts)
    client.r.delete(*client.r.keys(f"{client.namespace}:*"))
