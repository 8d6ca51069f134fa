"""Job records: a Redis hash per job, flat scalars plus JSON for nested fields.

Status transitions happen only inside the session queue's Lua scripts; this module reads records
and waits for them to finish.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from .errors import JobNotFound, WaitTimeout
from .keys import Keys
from .models import Job

_JSON_FIELDS = ("result", "error", "last_error", "metadata", "webhook")


def encode_job(job: Job) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in job.model_dump(mode="json").items():
        if value is None:
            continue
        out[name] = json.dumps(value, separators=(",", ":")) if name in _JSON_FIELDS else str(value)
    return out


def decode_job(fields: dict[str, str]) -> Job:
    data: dict[str, Any] = dict(fields)
    for name in _JSON_FIELDS:
        if name in data:
            data[name] = json.loads(data[name])
    return Job.model_validate(data)


class JobStore:
    def __init__(self, r: redis.Redis, keys: Keys):
        self.r = r
        self.keys = keys

    def get(self, job_id: str) -> Job | None:
        fields = self.r.hgetall(self.keys.job(job_id))
        return decode_job(fields) if fields else None

    def get_many(self, job_ids: list[str]) -> list[Job | None]:
        pipe = self.r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return [decode_job(f) if f else None for f in pipe.execute()]

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job finishes: woken by the commit's PUBLISH, not by polling."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.keys.done_channel(job_id))
            while True:
                job = self.get(job_id)
                if job is None:
                    raise JobNotFound(f"unknown or expired job: {job_id}")
                if job.status.finished:
                    return job
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise WaitTimeout(f"job {job_id} still {job.status.value} after {timeout}s")
                # A bounded wait also notices a record that expired without a notification.
                pubsub.get_message(timeout=min(remaining if remaining is not None else 5.0, 5.0))
        finally:
            pubsub.close()
