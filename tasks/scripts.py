"""The Lua scripts, one file each in ``lua/``, loaded as package data and registered per client.

Each file starts with a header naming every ``KEYS[i]`` and ``ARGV[i]`` on its own line and what
it returns (``tests/test_scripts.py`` checks the headers against the bodies). Steps several
scripts share live once in ``lua/lib/`` and are spliced in where a script says
``--#include lib/<name>.lua``. Every key a script touches is passed in KEYS, built by ``keys.py``,
and one call's keys share one hash tag.

**On a Redis Cluster** a call runs on the node of its keys' slot. redis-py refuses ``EVALSHA`` in a
cluster pipeline (a node that lost its script cache would fail the pipeline midway, with no way to load
the script and go on), so a call queued into one sends the script itself (``EVAL``: a few kilobytes,
compiled once per node); a direct call stays ``EVALSHA``, loaded on every primary if a node lacks it.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.resources import files

from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import ClusterPipeline as AsyncClusterPipeline
from redis.cluster import ClusterPipeline
from redis.commands.core import AsyncScript, Script

_INCLUDE = re.compile(r"^--#include (lib/[a-z_]+\.lua)$", re.MULTILINE)


def _read(path: str) -> str:
    return files("chatq.tasks").joinpath("lua", path).read_text(encoding="utf-8")


def names() -> list[str]:
    """Every script's name (its file name without ``.lua``)."""
    folder = files("chatq.tasks").joinpath("lua")
    return sorted(p.name.removesuffix(".lua") for p in folder.iterdir() if p.name.endswith(".lua"))


@lru_cache(maxsize=None)
def source(name: str) -> str:
    """The script's text with its includes spliced in."""
    return _INCLUDE.sub(lambda m: _read(m[1]), _read(f"{name}.lua"))


class ClusterScript:
    """A script of a cluster client: ``EVAL`` into a cluster pipeline, else redis-py's ``Script``."""

    def __init__(self, script: Script):
        self.script = script

    def __call__(self, keys: list | None = None, args: list | None = None, client: Any = None) -> Any:
        keys, args = keys or [], args or []
        if isinstance(client, ClusterPipeline):
            return client.execute_command("EVAL", self.script.script, len(keys), *keys, *args)
        return self.script(keys, args, client)


class AsyncClusterScript(ClusterScript):
    """``ClusterScript`` for ``redis.asyncio``: awaited like an ``AsyncScript``."""

    async def __call__(self, keys: list | None = None, args: list | None = None, client: Any = None) -> Any:
        keys, args = keys or [], args or []
        if isinstance(client, AsyncClusterPipeline):
            return client.execute_command("EVAL", self.script.script, len(keys), *keys, *args)
        return await self.script(keys, args, client)


def load(r: redis.Redis, name: str) -> Script:
    """The script registered on this client: called as ``script(keys=[...], args=[...], client=pipe)``."""
    script = r.register_script(source(name))
    if isinstance(r, (redis.RedisCluster, redis.asyncio.RedisCluster)):
        return (AsyncClusterScript if isinstance(script, AsyncScript) else ClusterScript)(script)  # type: ignore[return-value]
    return script


@lru_cache(maxsize=256)
def cached(r: redis.Redis, name: str) -> Script:
    """``load`` for callers that get the client per call (webhook delivery): one Script per client."""
    return load(r, name)
