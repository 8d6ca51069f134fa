"""The no-queue limit: the ``openai`` SDK calling the test server directly from one process.

Each session's messages run in order on one thread with the history kept in memory, so this is
the same conversation work with no broker, no store and no second process: the ceiling a queue
can approach. Threads = the in-flight count chatq reached on the same workload.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from openai import OpenAI

from .stats import Run
from .workload import Check, Workload, check, text


History = dict[str, list[dict[str, str | None]]]


def run(base_url: str, wl: Workload, threads: int, latency: float) -> tuple[Run, History]:
    """Returns the run and each session's history, for ``check_sessions`` after the measured part."""
    threads = max(1, min(threads, len(wl.sessions)))
    # The SDK's own client and connection pool, as chatq's provider uses it.
    client = OpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=120)
    result = Run("limit", latency, sessions=len(wl.sessions))
    histories: History = {}
    lock = threading.Lock()

    def session(sid: str, count: int) -> None:
        history: list[dict[str, str | None]] = []
        for j in range(count):
            history.append({"role": "user", "content": text(sid, j)})
            try:
                completion = client.chat.completions.create(model="gpt-4o-mini", messages=history)
            except Exception as exc:
                with lock:
                    result.errors.append(repr(exc))
                history.pop()
                continue
            history.append({"role": "assistant", "content": completion.choices[0].message.content})
            with lock:
                result.jobs += 1
                result.done_at.append(time.time())
        histories[sid] = history

    started = time.time()
    with ThreadPoolExecutor(threads, thread_name_prefix="bench-limit") as pool:
        for sid, count in wl.counts.items():
            pool.submit(session, sid, count)
    result.elapsed = time.time() - started
    result.failed = wl.jobs - result.jobs
    client.close()
    return result, histories


def check_sessions(histories: History, wl: Workload) -> Check:
    total = Check()
    for sid, count in wl.counts.items():
        total.add(check(sid, count, [(m["role"], m["content"]) for m in histories.get(sid, [])]))
    return total
