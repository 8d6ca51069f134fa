"""Tools the test agents import by ``module:function``, as a user's agents file would."""

from __future__ import annotations

import os
import signal

import redis
from pydantic import BaseModel

from chatq.worker.tools import tool


def _redis() -> redis.Redis:
    return redis.Redis.from_url(os.environ["CHATQ_REDIS_URL"])


def _key(name: str) -> str:
    return f"{os.environ['CHATQ_NAMESPACE']}:test:{name}"


def record(key: str) -> str:
    """A side effect that must happen once per tool call, even across redeliveries."""
    return f"recorded {_redis().incr(_key(key))}"


def die_once(key: str) -> str:
    """Kill the whole worker the first time, as a crash mid-job would."""
    if _redis().incr(_key(f"die:{key}")) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def die() -> str:
    """A poison job: kills every worker that runs it."""
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


def explode(reason: str = "boom") -> str:
    raise RuntimeError(reason)


class Forecast(BaseModel):
    city: str
    days: int = 1


@tool(name="weather")
def weather_lookup(req: Forecast) -> dict:
    """Weather for a city."""
    return {"city": req.city, "days": req.days, "sky": "clear"}
