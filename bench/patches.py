"""Prototype fixes for the hot spots the profiles found, applied by monkeypatching, bench-only.

Fixes 1, 2, 5, 6, 7 and 8 of RESULTS.md have since been made in the code itself, so their patches
are gone; what remains are the two provider fixes that lean on SDK internals.

They exist to measure what each proposed change to ``tasks/`` or ``worker/`` would gain
(``run.py --patch NAME,...``), never to ship: the real change belongs in the named function.
Worker-side patches are applied in the worker processes by ``bench.patched_worker``; client-side
ones in the benchmark process, once per process. Each keeps the behaviour the tests rely on
(order, lease fencing, the sweeper's recovery); they pass the benchmark's turn checks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

WORKER: dict[str, Callable[[], None]] = {}
CLIENT: dict[str, Callable[[], None]] = {}  # none left: the client-side fixes are in tasks/ now


def _worker(fn: Callable[[], None]) -> Callable[[], None]:
    WORKER[fn.__name__.replace("_", "-")] = fn
    return fn


_PROVIDER = {"post": False, "per_thread": False}
_local = threading.local()


def _install_provider_call() -> None:
    """One replacement ``Provider._call`` honouring both provider patches."""
    import ssl

    import openai
    from openai.types.chat import ChatCompletion

    from worker import offline_model
    from worker.provider import Provider

    tls = ssl.create_default_context()  # once: each OpenAI() otherwise builds one (~20 ms, CA loading)

    def _call(self: Provider, request: dict) -> ChatCompletion:
        if self._client is None:
            return ChatCompletion.model_validate(offline_model.complete(request))
        client = self._client
        if _PROVIDER["per_thread"]:
            client = getattr(_local, "client", None)
            if client is None:
                client = _local.client = openai.OpenAI(
                    api_key=self._client.api_key, base_url=self._client.base_url, max_retries=0,
                    http_client=openai.DefaultHttpx2Client(verify=tls, timeout=self.settings.provider_timeout))
        if _PROVIDER["post"]:
            return client.post("/chat/completions", body=request, cast_to=ChatCompletion,
                               options={"security": {"bearer_auth": True}})
        return client.chat.completions.create(**request)

    Provider._call = _call  # type: ignore[method-assign]


@_worker
def sdk_post() -> None:
    """worker/provider.py Provider._call: send the already-plain JSON request with the SDK's
    ``client.post`` instead of ``chat.completions.create``, which re-walks every message and tool
    schema against the SDK's TypedDicts (``maybe_transform``) on every call."""
    _PROVIDER["post"] = True
    _install_provider_call()


@_worker
def thread_sdk() -> None:
    """worker/provider.py Provider: one OpenAI client (and connection pool) per thread instead of
    one per process shared by hundreds of threads: that pool keeps only 100 idle connections (the
    SDK's default), so each wave of calls beyond 100 opens new TCP connections, and a larger pool
    is slower still (httpcore scans every connection under one lock per request). The per-thread
    clients share one TLS context: building one per client costs ~20 ms of CPU."""
    _PROVIDER["per_thread"] = True
    _install_provider_call()


def apply(names: list[str], side: dict[str, Callable[[], None]]) -> list[str]:
    """Apply the named patches that belong to this side; returns the names applied."""
    unknown = [n for n in names if n not in WORKER and n not in CLIENT]
    if unknown:
        raise SystemExit(f"unknown patch {unknown}; known: {sorted({*WORKER, *CLIENT})}")
    applied = [n for n in names if n in side]
    for n in applied:
        side[n]()
    return applied
