"""``chatq demo``: two sessions, messages submitted without waiting, replies polled and printed."""

from __future__ import annotations

import os
import subprocess
import tempfile
import sys
import time
import uuid

from chatq.tasks.client import ChatClient
from chatq.tasks.models import Job

WORKER_LOG = os.path.join(tempfile.gettempdir(), "chatq-demo-worker.log")
SCRIPT = [
    ("alice", "My name is Alice."),
    ("bob", "Hello! Who am I?"),
    ("alice", "What's my name?"),
    ("bob", "What's my name?"),
    ("alice", 'Please add these: [[tool:add {"a": 2, "b": 40}]]'),
]


def _line(job: Job) -> str:
    usage = job.result.usage if job.result else None
    reply = job.result.content if job.result else (job.error.message if job.error else "")
    tokens = f"{usage.total_tokens} tokens ({usage.model})" if usage else "-"
    return f"{job.session_id:<22} {job.status.value:<9} {tokens:<34} {reply}"


def poll(client: ChatClient, job_ids: list[str], timeout: float) -> set[str]:
    """Poll until every job has finished or is gone (expired, deleted), or the timeout; the unfinished."""
    deadline = time.monotonic() + timeout
    pending = set(job_ids)
    while pending and time.monotonic() < deadline:
        ids = sorted(pending)
        for job_id, job in zip(ids, client.jobs.get_many(ids)):
            if job is None or job.status.finished:  # a job that is gone will never finish
                pending.discard(job_id)
        if pending:
            time.sleep(0.1)
    return pending


def run_demo(start_worker: bool = True, timeout: float = 60) -> int:
    client = ChatClient()
    worker = None
    if start_worker:
        log = open(WORKER_LOG, "w")
        worker = subprocess.Popen([sys.executable, "-m", "chatq", "worker", "-c", "16", "-l", "WARNING"],
                                  stdout=log, stderr=subprocess.STDOUT)
    try:
        run = uuid.uuid4().hex[:6]
        sessions = {name: f"demo-{name}-{run}" for name in ("alice", "bob")}
        mode = "embedded offline model" if client.settings.offline else client.settings.model
        print(f"chatq demo: {len(SCRIPT)} messages to 2 sessions, submitted without waiting ({mode})\n")
        jobs = [client.submit(text, sessions[who]) for who, text in SCRIPT]
        for (who, text), job in zip(SCRIPT, jobs):
            print(f"submitted {job.job_id} to {job.session_id}: {text}")
        print("\npolling...")
        poll(client, [j.job_id for j in jobs], timeout)
        print(f"\n{'session':<22} {'status':<9} {'usage':<34} reply")
        finished = [client.get(j.job_id) for j in jobs]
        for job in finished:
            print(_line(job) if job else "(expired)")
        for name, sid in sessions.items():
            session = client.get_session(sid)
            turns = len(session.messages) if session else 0
            total = session.usage.total_tokens if session else 0
            print(f"\nsession {sid}: {turns} messages in history, {total} tokens in all")
        ok = all(j and j.status == "succeeded" for j in finished)
        hint = f"see {WORKER_LOG}" if worker else "is a worker running?"
        print("\ndemo ok" if ok else f"\ndemo FAILED: some jobs did not succeed ({hint})")
        return 0 if ok else 1
    finally:
        if worker:
            worker.terminate()
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
