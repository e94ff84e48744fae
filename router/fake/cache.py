"""The prompt-cache simulation: one cache per API key and model, as upstream keeps (spec §6.3).

For each breakpoint the cache looks back up to ``LOOKBACK`` blocks for the longest prefix it
holds; that prefix is read (``cache_read_input_tokens``) and its entry's TTL refreshed. The
rest up to the last breakpoint is written, each stretch at the TTL of the breakpoint that ends
it (``cache_creation`` splits 5m and 1h); tokens after the last breakpoint are plain input.
Entries expire after their TTL on the fake's ``Clock``, which tests move instead of sleeping.
There is no minimum cacheable length. A conversation moved to another model finds nothing
there: it starts cold.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.fake.prompt import Prompt

__all__ = ["LOOKBACK", "TTL_SECONDS", "CacheUse", "Clock", "PromptCache"]

LOOKBACK = 20
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}


class Clock:
    """Seconds from a source clock plus an offset that tests can move forward."""

    def __init__(self, source: Callable[[], float] | None = None) -> None:
        """Creates a clock.

        Args:
            source: Returns seconds; None uses ``time.monotonic``.
        """
        self._source = source or time.monotonic
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        """Returns the current time in seconds."""
        with self._lock:
            return self._source() + self._offset

    def advance(self, seconds: float) -> float:
        """Moves the clock forward and returns the total offset so far.

        Raises:
            ValueError: ``seconds`` is negative (cache time never runs backwards).
        """
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += seconds
            return self._offset

    @property
    def offset(self) -> float:
        """Seconds the clock has been moved forward in total."""
        with self._lock:
            return self._offset


@dataclass(frozen=True)
class CacheUse:
    """How one request's input splits into cache reads, cache writes and plain input.

    Attributes:
        read: Tokens read from the cache.
        written_5m: Tokens written with a 5-minute TTL.
        written_1h: Tokens written with a 1-hour TTL.
        uncached: Tokens after the last breakpoint (or all, without one).
    """

    read: int
    written_5m: int
    written_1h: int
    uncached: int

    @property
    def written(self) -> int:
        """All tokens written, both TTLs."""
        return self.written_5m + self.written_1h


@dataclass
class _Entry:
    ttl: float
    expires: float


class PromptCache:
    """Cached prefixes per scope (an API-key hash and a model id); thread-safe."""

    def __init__(self, clock: Clock) -> None:
        """Creates an empty cache that tells time by ``clock``."""
        self._clock = clock
        self._scopes: dict[tuple[str, str], dict[bytes, _Entry]] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forgets every entry of every scope."""
        with self._lock:
            self._scopes.clear()

    def entries(self, scope: tuple[str, str]) -> int:
        """Returns how many unexpired prefixes a scope holds."""
        now = self._clock.now()
        with self._lock:
            return sum(entry.expires > now for entry in self._scopes.get(scope, {}).values())

    def use(self, scope: tuple[str, str], prompt: Prompt) -> CacheUse:
        """Serves one request: reads what is cached, writes up to each breakpoint.

        Args:
            scope: ``(API-key hash, model id)``.
            prompt: The request's prompt in cache order.

        Returns:
            The split of the request's input tokens.
        """
        now = self._clock.now()
        points = sorted(prompt.breakpoints, key=lambda point: point.index)
        with self._lock:
            store = self._scopes.setdefault(scope, {})
            for key in [key for key, entry in store.items() if entry.expires <= now]:
                del store[key]
            hit = -1
            for point in points:
                for index in range(point.index, max(-1, point.index - LOOKBACK - 1), -1):
                    if prompt.prefixes[index] in store:
                        hit = max(hit, index)
                        break
            written = {"5m": 0, "1h": 0}
            covered = hit
            for point in points:
                if point.index > covered:
                    stretch = prompt.tokens_through(point.index) - prompt.tokens_through(covered)
                    written[point.ttl] += stretch
                    covered = point.index
            if hit >= 0:
                entry = store[prompt.prefixes[hit]]
                entry.expires = now + entry.ttl
            for point in points:
                ttl = TTL_SECONDS[point.ttl]
                known = store.get(prompt.prefixes[point.index])
                if known is None:
                    store[prompt.prefixes[point.index]] = _Entry(ttl, now + ttl)
                else:
                    known.ttl = max(known.ttl, ttl)
                    known.expires = max(known.expires, now + ttl)
            if not store:
                del self._scopes[scope]
        read = prompt.tokens_through(hit)
        uncached = max(0, prompt.total - read - written["5m"] - written["1h"])
        return CacheUse(read, written["5m"], written["1h"], uncached)
