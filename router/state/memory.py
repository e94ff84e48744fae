"""The per-process store: a dict with time-to-live and least-recently-used eviction.

For tests, for a single worker, and as the stand-in while a shared backend is unreachable.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from router.state.store import Charge, OnError, Store, counter_value, ttl_milliseconds


class MemoryStore:
    """Keys in one process's memory, at most ``max_keys`` of them.

    Every call runs to completion without awaiting, so tasks of one event loop never see a
    half-done ``add``.
    """

    name = "memory"
    on_error: OnError = "open"

    def __init__(self, max_keys: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_keys
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = self._clock()
        return [self._live(key, now) for key in keys]

    async def set_many(self, items: Mapping[str, bytes], ttl_seconds: float) -> None:
        expires = self._clock() + ttl_milliseconds(ttl_seconds) / 1000
        for key, value in items.items():
            self._put(key, bytes(value), expires)

    async def add(self, key: str, amount: int, ttl_seconds: float) -> int:
        now = self._clock()
        current = self._live(key, now)
        number = counter_value(current, key) + amount
        expires = (self._entries[key][1] if current is not None
                   else now + ttl_milliseconds(ttl_seconds) / 1000)
        self._put(key, str(number).encode(), expires)
        return number

    async def charge(self, charges: Sequence[Charge], now_us: int, once: str | None = None
                     ) -> tuple[bool, list[int]]:
        now = self._clock()
        current = [self._live(c.key, now) for c in charges]
        values = [counter_value(v, c.key) for v, c in zip(current, charges, strict=True)]
        if any(c.blocks(v, now_us) for c, v in zip(charges, values, strict=True)):
            return False, values
        after = []
        for charge, value, raw in zip(charges, values, current, strict=True):
            new = charge.applied_to(value, now_us)
            keep = raw is not None and not charge.bucket
            expires = (self._entries[charge.key][1] if keep
                       else now + ttl_milliseconds(charge.ttl_seconds) / 1000)
            self._put(charge.key, str(new).encode(), expires)
            after.append(new)
        return True, after

    def strict(self) -> Store:
        return self

    async def close(self) -> None:
        self._entries.clear()

    def clear(self) -> None:
        """Forget every key."""
        self._entries.clear()

    def _live(self, key: str, now: float) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def _put(self, key: str, value: bytes, expires: float) -> None:
        self._entries[key] = (value, expires)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
