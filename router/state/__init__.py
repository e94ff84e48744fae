"""Placeholder until the state branch lands: the Store protocol and an in-memory store."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Protocol


class Store(Protocol):
    name: str

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...
    async def set_many(self, items: Mapping[str, bytes], ttl_seconds: float) -> None: ...
    async def add(self, key: str, amount: int, ttl_seconds: float) -> int: ...
    async def close(self) -> None: ...


class MemoryStore:
    name = "memory"

    def __init__(self, max_entries: int = 100_000) -> None:
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._max = max_entries

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        now = time.time()
        out: list[bytes | None] = []
        for key in keys:
            entry = self._data.get(key)
            out.append(entry[0] if entry and entry[1] > now else None)
        return out

    async def set_many(self, items: Mapping[str, bytes], ttl_seconds: float) -> None:
        expires = time.time() + ttl_seconds
        for key, value in items.items():
            self._data[key] = (value, expires)
            self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def add(self, key: str, amount: int, ttl_seconds: float) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        return None
