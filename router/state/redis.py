"""The shared store for many replicas: Redis, through redis-py's asyncio client.

Each call is one round trip: ``MGET`` for ``get_many``, one pipeline of ``SET … PX`` for
``set_many``, one Lua script for ``add`` (``INCRBY``, and the expiry when it created the key).
Calls are bounded by ``timeout`` and never retried here: a failed call raises
:class:`StoreUnavailable` at once, and :class:`FallbackStore` serves it from local memory.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from router.config import redacted_url
from router.state.store import OnError, Store, StoreUnavailable, ttl_milliseconds

MAX_CONNECTIONS = 64
"""Connections per worker. A call holds one for a round trip (well under a millisecond), so
64 serve tens of thousands of calls a second; past it calls wait, within ``timeout``."""

ADD_SCRIPT = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""
"""A key without expiry right after INCRBY is one INCRBY just created (expired keys are gone):
give it its time-to-live. Sent whole each time (EVAL, not EVALSHA), so a restarted Redis
without the script cached still answers in one round trip."""

_NOT_AN_INTEGER = re.compile(r"not an integer|overflow", re.IGNORECASE)


class RedisStore:
    """Keys in a Redis server shared by every replica."""

    name = "redis"
    on_error: OnError = "open"

    def __init__(self, url: str, *, timeout: float) -> None:
        self.where = redacted_url(url)
        self._password = urlsplit(url).password
        self._timeout = timeout
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout,
            socket_timeout=timeout, socket_connect_timeout=timeout,
            # One immediate retry on a fresh connection: after Redis restarts, every pooled
            # connection is dead and each would otherwise fail one call. No waiting: while
            # Redis is down the fallback to memory is what serves. (A reply lost after Redis
            # ran an ``add`` can count it twice: budgets then err on the side of refusing.)
            retry=Retry(NoBackoff(), 1), retry_on_error=[],
            # No CLIENT SETINFO on connect: two round trips less for every new connection.
            lib_name=None, lib_version=None,
        )
        self._client = aioredis.Redis(connection_pool=pool)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: list[bytes | None] = await self._call(self._client.mget(list(keys)))
        return values

    async def set_many(self, items: Mapping[str, bytes], ttl_seconds: float) -> None:
        if not items:
            return
        ttl = ttl_milliseconds(ttl_seconds)
        pipe = self._client.pipeline(transaction=False)
        for key, value in items.items():
            pipe.set(key, value, px=ttl)
        await self._call(pipe.execute())

    async def add(self, key: str, amount: int, ttl_seconds: float) -> int:
        script = self._client.eval(ADD_SCRIPT, 1, key, amount, ttl_milliseconds(ttl_seconds))
        return int(await self._call(script))

    def strict(self) -> Store:
        return self

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, request: Any) -> Any:
        """Await one Redis request within the timeout.

        Raises:
            StoreUnavailable: Redis did not answer, or answered with an error.
            ValueError: ``add`` on a key that holds no integer.
        """
        try:
            async with asyncio.timeout(self._timeout):
                return await request
        except ResponseError as err:
            if _NOT_AN_INTEGER.search(str(err)):
                raise ValueError(f"redis: {err}") from err
            raise StoreUnavailable(self._describe(err)) from err
        except (RedisError, OSError, TimeoutError) as err:
            raise StoreUnavailable(self._describe(err)) from err

    def _describe(self, err: BaseException) -> str:
        text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return f"redis {self.where}: {text}"
