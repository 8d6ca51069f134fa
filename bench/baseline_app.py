"""The baseline: what a user writes from scratch with Celery — one task per message.

Load the session's JSON history from a Redis key, call the OpenAI SDK, append both turns, save.
Celery defaults everywhere (early acks, prefetch 4), the Redis result backend, and a client that
calls ``chat.delay(...)`` then ``.get()``. Nothing orders two messages of one session, which is
exactly what the benchmark's turn check looks for. The code is pool-agnostic: ``bench/run.py``
runs it on Celery's default prefork pool and, tuned for I/O, on ``-P threads -c 200`` and
``-P gevent -c 1000`` (``bench.baseline_load.POOLS``); one SDK client per process serves every
thread or greenlet, as a user would write it.

Run by ``bench/run.py`` as ``celery -A bench.baseline_app worker -Q <queue> [pool options]``;
configured by environment so the workers and the driving process agree (BENCH_BASELINE_BROKER,
_BACKEND, _QUEUE, _PREFIX).
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import Celery
from openai import OpenAI

BACKEND = os.environ.get("BENCH_BASELINE_BACKEND", "redis://127.0.0.1:6379/11")
PREFIX = os.environ.get("BENCH_BASELINE_PREFIX", "bench-baseline")

app = Celery("baseline", broker=os.environ.get("BENCH_BASELINE_BROKER", "redis://127.0.0.1:6379/10"),
             backend=BACKEND)
app.conf.task_default_queue = os.environ.get("BENCH_BASELINE_QUEUE", "bench-baseline")
app.conf.broker_connection_retry_on_startup = True

store = redis.Redis.from_url(BACKEND, decode_responses=True)
_openai: OpenAI | None = None


def history_key(session_id: str) -> str:
    return f"{PREFIX}:history:{session_id}"


def openai_client() -> OpenAI:
    """Created on first use, so each prefork child has its own connections."""
    global _openai
    if _openai is None:
        _openai = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment
    return _openai


@app.task
def chat(session_id: str, message: str) -> dict:
    started = time.time()
    history = json.loads(store.get(history_key(session_id)) or "[]")
    history.append({"role": "user", "content": message})
    completion = openai_client().chat.completions.create(model="gpt-4o-mini", messages=history)
    reply = completion.choices[0].message.content
    history.append({"role": "assistant", "content": reply})
    store.set(history_key(session_id), json.dumps(history))
    # The timestamps are the benchmark's only addition: the queue-overhead figures need them.
    return {"reply": reply, "started_at": started, "finished_at": time.time()}
