"""Open the store ``router.yaml``'s ``state`` section names: the app's lifespan calls this."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from router.config import StateConfig
from router.state.memory import MemoryStore
from router.state.sqlite import open_sqlite, state_dir
from router.state.store import FallbackStore, OnFallback, StateError, Store


async def open_store(config: StateConfig, *, on_fallback: OnFallback | None = None) -> Store:
    """Open the configured store.

    SQLite and Redis are wrapped so that a call they cannot serve is served from local memory
    and reported to ``on_fallback(backend, error)``; a Redis that is down at start does not stop
    the proxy from starting (it is retried every ``redis_retry_seconds``).

    Raises:
        StateError: the store cannot be opened (the SQLite state directory is not writable, no
            Redis URL); the message says what to change.
    """
    if config.backend == "memory":
        return MemoryStore(config.memory_max_keys)
    local = MemoryStore(config.memory_max_keys)
    if config.backend == "sqlite":
        sqlite = open_sqlite(state_dir(config.dir), max_keys=config.max_keys,
                             lock_timeout=config.lock_timeout)
        # A locked or failing file is retried on the next call: waiting would not unlock it
        # sooner, and a busy moment must not send every worker to memory for a second.
        return FallbackStore(sqlite, local, retry_seconds=0.0, on_fallback=on_fallback,
                             where=str(sqlite.path))
    if not config.url:
        raise StateError("state.backend is redis but state.url (or ROUTER_STATE_URL) is not set")
    # redis is imported only when used: the other backends start without it.
    from router.state.redis import RedisStore

    redis = RedisStore(config.url, timeout=config.redis_timeout)
    store = FallbackStore(redis, local, retry_seconds=config.redis_retry_seconds,
                          on_error=config.on_redis_error, on_fallback=on_fallback,
                          where=redis.where)
    await store.check()
    return store


@asynccontextmanager
async def opened_store(config: StateConfig, *, on_fallback: OnFallback | None = None
                       ) -> AsyncIterator[Store]:
    """Open the configured store for the duration of a ``with`` block (a lifespan); see
    :func:`open_store`."""
    store = await open_store(config, on_fallback=on_fallback)
    try:
        yield store
    finally:
        await store.close()
