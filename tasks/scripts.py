"""The Lua scripts, one file each in ``lua/``, loaded as package data and registered per client.

Each file starts with a header naming every ``KEYS[i]`` and ``ARGV[i]`` on its own line and what
it returns (``tests/test_scripts.py`` checks the headers against the bodies). Steps several
scripts share live once in ``lua/lib/`` and are spliced in where a script says
``--#include lib/<name>.lua``. Every key a script touches is passed in KEYS, built by ``keys.py``,
and one call's keys share one hash tag.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib.resources import files

import redis
from redis.commands.core import Script

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


def load(r: redis.Redis, name: str) -> Script:
    """The script registered on this client: called as ``script(keys=[...], args=[...], client=pipe)``."""
    return r.register_script(source(name))


@lru_cache(maxsize=256)
def cached(r: redis.Redis, name: str) -> Script:
    """``load`` for callers that get the client per call (webhook delivery): one Script per client."""
    return load(r, name)
