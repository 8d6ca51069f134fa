"""Redis clients whose pipelines run chatq's scripts in the pipeline's one round trip.

redis-py's ``Pipeline.execute`` sends ``SCRIPT EXISTS`` for the scripts queued in it before sending
the pipeline itself: every submit, commit, lease renewal and hand-off wait paid a second round trip
for it (``bench/submit_cost.py`` counts one ``script|exists`` per submit). Here a non-transactional
pipeline sends its ``EVALSHA`` calls as they are; a call that finds its script missing (Redis
restarted, or its script cache was flushed) gets ``NOSCRIPT``, and only then are the pipeline's
scripts loaded and each failed call sent again, in order, after the rest of the pipeline. Every
chatq pipeline tolerates that order: a failed call's earlier commands ran, and the commands after it
never depend on it within the pipeline (a hand-off wait's registration, missed once after a restart,
costs one wait's hand-offs: those sessions get Celery wake-ups; a batch's seeds, which its jobs do
depend on, go in a pipeline of their own). Transactions keep redis-py's way.

``get_redis`` and ``get_async_redis`` (``redis_pool``) build these; a Redis Cluster's pipelines send
``EVAL`` instead (``scripts.ClusterScript``).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError


def _first_error(results: list[Any]) -> None:
    for result in results:
        if isinstance(result, Exception):
            raise result


class Pipeline(redis.client.Pipeline):
    def load_scripts(self) -> None:
        if self.transaction or self.explicit_transaction:
            super().load_scripts()

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.transaction or self.explicit_transaction or not self.scripts:
            return super().execute(raise_on_error)
        stack, scripts = list(self.command_stack), list(self.scripts)
        results = super().execute(raise_on_error=False)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            client = redis.Redis(connection_pool=self.connection_pool)
            for script in scripts:
                client.script_load(script.script)
            for i in missing:
                args, options = stack[i]
                try:
                    results[i] = client.execute_command(*args, **options)
                except redis.ResponseError as exc:
                    results[i] = exc
        if raise_on_error:
            _first_error(results)
        return results


class Redis(redis.Redis):
    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        return Pipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


class AsyncPipeline(aioredis.client.Pipeline):
    async def load_scripts(self) -> None:
        if self.is_transaction or self.explicit_transaction:
            await super().load_scripts()

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.is_transaction or self.explicit_transaction or not self.scripts:
            return await super().execute(raise_on_error)
        stack, scripts = list(self.command_stack), list(self.scripts)
        results = await super().execute(raise_on_error=False)
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            client = aioredis.Redis(connection_pool=self.connection_pool)
            for script in scripts:
                await client.script_load(script.script)
            for i in missing:
                args, options = stack[i]
                try:
                    results[i] = await client.execute_command(*args, **options)
                except redis.ResponseError as exc:
                    results[i] = exc
        if raise_on_error:
            _first_error(results)
        return results


class AsyncRedis(aioredis.Redis):
    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> AsyncPipeline:
        return AsyncPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
