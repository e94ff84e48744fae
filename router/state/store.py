"""The shared state store's interface, its errors, and the wrapper that falls back to memory.

::

    Exception
     ├── StateError          the store cannot be opened (unwritable state dir): raised at start
     └── StoreUnavailable    one call could not reach the shared backend (Redis down, SQLite
                             locked past the timeout); the wrapper serves the call from local
                             memory instead, so callers only see it from ``Store.strict()``
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

log = logging.getLogger("router.state")

OnFallback = Callable[[str, BaseException], None]
"""Told ``(backend, error)`` for every call served from local memory instead of the backend."""

OnError = Literal["open", "closed"]

MAX_TTL_SECONDS = 10 * 365 * 24 * 3600.0
"""Longest time-to-live kept; longer ones (and infinity) are cut to it."""

T = TypeVar("T")


class StateError(Exception):
    """The store cannot be opened: the message says what to change."""


class StoreUnavailable(Exception):
    """The shared backend did not serve a call. The message never holds a password."""


@dataclass(frozen=True, slots=True)
class Charge:
    """One integer that :meth:`Store.charge` changes together with others: all or none.

    A *counter* (``bucket=False``) is a sum, micro-dollars of a budget window: ``amount`` is
    added; an absent key starts at 0 and expires ``ttl_seconds`` from now, a live one keeps its
    expiry (a fixed window). With a ``limit``, the charge is refused while the value is already
    at or past it, so concurrent charges overshoot by at most one of them.

    A *bucket* (``bucket=True``) is a token bucket kept as the time, in microseconds, at which
    it is full again (the generic cell-rate algorithm): ``amount`` is microseconds of refill
    taken (negative gives some back). With a ``limit`` (the bucket's size, in microseconds), the
    charge is refused unless the bucket is full or holds enough; each write renews the key's
    time-to-live. Charges without a limit (settling) are never refused.
    """

    key: str
    amount: int
    ttl_seconds: float
    limit: int | None = None
    bucket: bool = False

    def blocks(self, value: int, now_us: int) -> bool:
        """Whether this charge is refused against the key's current ``value``."""
        if self.limit is None:
            return False
        if self.bucket:
            return value > now_us and value + self.amount - now_us > self.limit
        return value >= self.limit

    def applied_to(self, value: int, now_us: int) -> int:
        """The key's value once this charge is applied to ``value``."""
        if self.bucket:
            return max(max(value, now_us) + self.amount, now_us)
        return value + self.amount


ONCE_TTL_SECONDS = 600.0
"""How long a :meth:`Store.charge` ``once`` id is remembered (Redis): a retry comes sooner."""


class Store(Protocol):
    """Bytes values under string keys, with a time-to-live; safe across tasks of one worker."""

    name: str
    """The backend: ``memory``, ``sqlite`` or ``redis``."""
    on_error: OnError
    """What callers that may refuse (budgets) should do when the backend is unreachable:
    ``open`` (serve from local memory) or ``closed`` (use :meth:`strict` and refuse)."""

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Return the value of each key, None where absent or expired; one round trip."""
        ...

    async def set_many(self, items: Mapping[str, bytes], ttl_seconds: float) -> None:
        """Store every item, each expiring ``ttl_seconds`` from now; one round trip."""
        ...

    async def add(self, key: str, amount: int, ttl_seconds: float) -> int:
        """Add ``amount`` to the integer under ``key`` atomically and return the new value.

        An absent or expired key starts at 0 and expires ``ttl_seconds`` from now; later adds
        keep that expiry (a fixed window). The value reads back as ASCII digits (``b"42"``).

        Raises:
            ValueError: the key holds a value that is not such an integer.
        """
        ...

    async def charge(self, charges: Sequence[Charge], now_us: int, once: str | None = None
                     ) -> tuple[bool, list[int]]:
        """Apply every charge atomically, or none if any is refused (see :class:`Charge`).

        ``now_us`` is the caller's wall clock in microseconds (buckets are times). ``once``
        makes a retried call apply at most once: a call with an id already applied in the last
        :data:`ONCE_TTL_SECONDS` changes nothing (Redis, whose client retries a call whose
        reply was lost; the other backends never retry a call that may have applied).

        Returns:
            Whether the charges were applied, and each key's value afterwards (as it is, when
            refused); 0 for an absent key. Keys must be distinct.
        """
        ...

    def strict(self) -> Store:
        """Return a view of this store whose calls raise :class:`StoreUnavailable` instead of
        falling back to local memory (for callers that fail closed)."""
        ...

    async def close(self) -> None:
        """Release connections and files; the store is unusable afterwards."""
        ...


def ttl_milliseconds(ttl_seconds: float) -> int:
    """Return a time-to-live as whole milliseconds, at least 1 (a TTL of 0 or less means the
    value expires at once) and at most :data:`MAX_TTL_SECONDS`."""
    if math.isnan(ttl_seconds) or ttl_seconds <= 0:
        return 1
    return max(1, int(min(ttl_seconds, MAX_TTL_SECONDS) * 1000))


def counter_value(value: bytes | None, key: str) -> int:
    """Return the integer a counter holds (0 when absent).

    Raises:
        ValueError: ``value`` is not the ASCII digits of an integer.
    """
    if value is None:
        return 0
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or str(number).encode() != value:
        raise ValueError(f"state key {key!r} holds a value that is not an integer")
    return number


class FallbackStore:
    """A shared backend that never fails a call: when it is unreachable, calls are served from
    a local memory store and ``on_fallback`` is told; after ``retry_seconds`` one call tries the
    backend again (the others keep using memory until that probe answers).

    Memory written during an outage is not copied back; it is dropped when the backend
    recovers, so a later outage starts from nothing rather than from stale values.
    """

    def __init__(self, primary: Store, local: Store, *, retry_seconds: float,
                 on_error: OnError = "open", on_fallback: OnFallback | None = None,
                 where: str = "") -> None:
        self.name = primary.name
        self.on_error: OnError = on_error
        self._primary = primary
        self._local = local
        self._retry_seconds = retry_seconds
        self._on_fallback = on_fallback
        self._where = where
        self._error: StoreUnavailable | None = None
        self._retry_at = 0.0
        self._probing = False

    @property
    def degraded(self) -> bool:
        """Whether the backend failed its last call (calls are being served from memory)."""
        return self._error is not None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._call(lambda store: store.get_many(keys))

    async def set_many(self, items: Mapping[str, bytes], ttl_seconds: float) -> None:
        await self._call(lambda store: store.set_many(items, ttl_seconds))

    async def add(self, key: str, amount: int, ttl_seconds: float) -> int:
        return await self._call(lambda store: store.add(key, amount, ttl_seconds))

    async def charge(self, charges: Sequence[Charge], now_us: int, once: str | None = None
                     ) -> tuple[bool, list[int]]:
        return await self._call(lambda store: store.charge(charges, now_us, once))

    def strict(self) -> Store:
        return _StrictView(self)

    async def close(self) -> None:
        try:
            await self._primary.close()
        finally:
            await self._local.close()

    async def check(self) -> bool:
        """Try the backend once now (at start); return whether it answered."""
        try:
            await self._attempt(lambda store: store.get_many(["router:state:check"]))
        except StoreUnavailable:
            return False
        return True

    async def _call(self, op: Callable[[Store], Awaitable[T]]) -> T:
        if self._may_try():
            try:
                return await self._attempt(op)
            except StoreUnavailable:
                pass
        assert self._error is not None
        if self._on_fallback is not None:
            try:
                self._on_fallback(self.name, self._error)
            except Exception:  # the app's counter must not turn a served call into an error
                log.exception("state on_fallback callback failed")
        return await op(self._local)

    async def _strict_call(self, op: Callable[[Store], Awaitable[T]]) -> T:
        if not self._may_try():
            assert self._error is not None
            raise self._error
        return await self._attempt(op)

    def _may_try(self) -> bool:
        if self._error is None:
            return True
        return not self._probing and time.monotonic() >= self._retry_at

    async def _attempt(self, op: Callable[[Store], Awaitable[T]]) -> T:
        """Run ``op`` on the backend, recording whether it is up.

        Raises:
            StoreUnavailable: the backend did not serve the call.
        """
        probing = self._error is not None
        self._probing = probing
        try:
            result = await op(self._primary)
        except StoreUnavailable as err:
            self._went_down(err)
            raise
        finally:
            if probing:
                self._probing = False
        if self._error is not None:
            self._came_back()
        return result

    def _went_down(self, err: StoreUnavailable) -> None:
        if self._error is None:
            log.warning({"event": "state_unavailable", "backend": self.name,
                         "where": self._where, "error": str(err),
                         "retry_seconds": self._retry_seconds,
                         "meanwhile": "serving from local memory"})
        self._error = err
        self._retry_at = time.monotonic() + self._retry_seconds

    def _came_back(self) -> None:
        log.warning({"event": "state_recovered", "backend": self.name, "where": self._where})
        self._error = None
        clear = getattr(self._local, "clear", None)
        if clear is not None:
            clear()


class _StrictView:
    """A :class:`FallbackStore` seen by a caller that fails closed."""

    def __init__(self, store: FallbackStore) -> None:
        self.name = store.name
        self.on_error: OnError = store.on_error
        self._store = store

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._store._strict_call(lambda store: store.get_many(keys))

    async def set_many(self, items: Mapping[str, bytes], ttl_seconds: float) -> None:
        await self._store._strict_call(lambda store: store.set_many(items, ttl_seconds))

    async def add(self, key: str, amount: int, ttl_seconds: float) -> int:
        return await self._store._strict_call(lambda store: store.add(key, amount, ttl_seconds))

    async def charge(self, charges: Sequence[Charge], now_us: int, once: str | None = None
                     ) -> tuple[bool, list[int]]:
        return await self._store._strict_call(lambda store: store.charge(charges, now_us, once))

    def strict(self) -> Store:
        return self

    async def close(self) -> None:
        """Do nothing: the store's owner (the app's lifespan) closes it."""
