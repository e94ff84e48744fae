"""The shared store for many replicas: Redis, through redis-py's asyncio client.

Each call is one command, so one round trip: ``MGET`` for ``get_many``, a Lua script for
``set_many`` (a ``SET … PX`` per key: half the client's CPU of a pipeline of SETs) and one for
``add`` (``INCRBY``, and the expiry when it created the key), and one for budgets' ``charge``
(every key checked, then all written or none). Scripts are sent whole (EVAL,
not EVALSHA), so a restarted Redis without them cached still answers in one round trip.
Calls are bounded by ``timeout`` and retried at most once, at once, on a fresh connection: a
failed call raises :class:`StoreUnavailable`, and :class:`FallbackStore` serves it from local
memory. No pipelining of several commands is needed: none of the calls sends more than one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from router.config_file import redacted_url
from router.state.store import (
    ONCE_TTL_SECONDS,
    Charge,
    OnError,
    Store,
    StoreUnavailable,
    ttl_milliseconds,
)

MAX_CONNECTIONS = 64
"""Calls in flight to Redis per worker (each on its own connection). A call holds one for a
round trip (well under a millisecond), so 64 serve tens of thousands of calls a second; past
it calls wait, within ``timeout``. A semaphore, not redis-py's BlockingConnectionPool, which
costs ~20 µs of CPU more per call."""

SET_SCRIPT = """
for i, key in ipairs(KEYS) do
    redis.call('SET', key, ARGV[i], 'PX', ARGV[#ARGV])
end
return 0
"""

ADD_SCRIPT = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""
"""A key without expiry right after INCRBY is one INCRBY just created (expired keys are gone):
give it its time-to-live."""

CHARGE_SCRIPT = """
local now = tonumber(ARGV[1])
local n = #KEYS
if ARGV[2] ~= '' then
    n = n - 1
    if redis.call('EXISTS', KEYS[#KEYS]) == 1 then
        local values = {1}
        for i = 1, n do values[i + 1] = tonumber(redis.call('GET', KEYS[i]) or '0') end
        return values
    end
end
local before, refused = {}, false
for i = 1, n do
    local a = 3 + (i - 1) * 4
    local amount, limit = tonumber(ARGV[a]), ARGV[a + 1]
    local v = tonumber(redis.call('GET', KEYS[i]) or '0')
    before[i] = v
    if limit ~= '' then
        limit = tonumber(limit)
        if ARGV[a + 2] == '1' then
            if v > now and v + amount - now > limit then refused = true end
        elseif v >= limit then
            refused = true
        end
    end
end
local values = {refused and 0 or 1}
for i = 1, n do
    local a = 3 + (i - 1) * 4
    if refused then
        values[i + 1] = before[i]
    elseif ARGV[a + 2] == '1' then
        local due = math.max(math.max(before[i], now) + tonumber(ARGV[a]), now)
        redis.call('SET', KEYS[i], string.format('%.0f', due), 'PX', ARGV[a + 3])
        values[i + 1] = due
    else
        values[i + 1] = redis.call('INCRBY', KEYS[i], ARGV[a])
        if redis.call('PTTL', KEYS[i]) == -1 then
            redis.call('PEXPIRE', KEYS[i], ARGV[a + 3])
        end
    end
end
if not refused and ARGV[2] ~= '' then
    redis.call('SET', KEYS[#KEYS], '1', 'PX', ARGV[2])
end
return values
"""
"""Budgets' reserve and settle (:meth:`RedisStore.charge`): read every key, refuse or apply
them all, in one command. ARGV: now in microseconds, the ``once`` marker's time-to-live ('' for
none: then KEYS holds no marker), then amount, limit ('' for none), bucket ('1'/'0') and
time-to-live per key. Values stay below 2^53, exact in Lua's doubles."""

_NOT_AN_INTEGER = re.compile(r"not an integer|overflow", re.IGNORECASE)


class RedisStore:
    """Keys in a Redis server shared by every replica."""

    name = "redis"
    on_error: OnError = "open"

    def __init__(self, url: str, *, timeout: float) -> None:
        self.where = redacted_url(url)
        self._password = urlsplit(url).password
        self._timeout = timeout
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        pool = aioredis.ConnectionPool.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            # One immediate retry on a fresh connection: after Redis restarts, every pooled
            # connection is dead and each would otherwise fail one call. No waiting: while
            # Redis is down the fallback to memory is what serves. (A reply lost after Redis
            # ran an ``add`` can count it twice: budgets then err on the side of refusing.)
            retry=Retry(NoBackoff(), 1), retry_on_error=[],
        )
        self._client = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values: list[bytes | None] = await self._call(self._client.mget, list(keys))
        return values

    async def set_many(self, items: Mapping[str, bytes], ttl_seconds: float) -> None:
        if not items:
            return
        ttl = ttl_milliseconds(ttl_seconds)
        await self._call(self._client.eval, SET_SCRIPT, len(items), *items, *items.values(), ttl)

    async def add(self, key: str, amount: int, ttl_seconds: float) -> int:
        ttl = ttl_milliseconds(ttl_seconds)
        return int(await self._call(self._client.eval, ADD_SCRIPT, 1, key, amount, ttl))

    async def charge(self, charges: Sequence[Charge], now_us: int, once: str | None = None
                     ) -> tuple[bool, list[int]]:
        if not charges:
            return True, []
        keys = [c.key for c in charges]
        args: list[Any] = [now_us, ""]
        if once is not None:
            keys.append(f"once:{once}")
            args[1] = ttl_milliseconds(ONCE_TTL_SECONDS)
        for c in charges:
            args += [c.amount, "" if c.limit is None else c.limit, int(c.bucket),
                     ttl_milliseconds(c.ttl_seconds)]
        reply = await self._call(self._client.eval, CHARGE_SCRIPT, len(keys), *keys, *args)
        return bool(reply[0]), [int(v) for v in reply[1:]]

    def strict(self) -> Store:
        return self

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, command: Callable[..., Any], *args: Any) -> Any:
        """Send one command to Redis and return its answer, all within the timeout.

        Raises:
            StoreUnavailable: Redis did not answer, or answered with an error.
            ValueError: ``add`` on a key that holds no integer.
        """
        try:
            async with asyncio.timeout(self._timeout), self._slots:
                return await command(*args)
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
