"""Budgets' view of the state store: the shared backend, or this worker's memory while the
backend cannot answer, reconciled when it is back.

Every reserve and settle is one :meth:`router.state.Store.charge` on the shared store's strict
view (one round trip), with an id that makes a retried call apply once. When it fails:

* ``state.on_redis_error: closed``: a reservation raises :class:`Unavailable` (the pipeline
  refuses the request); a settlement is still kept, as below, so that spend is never lost.
* ``open`` (and always for SQLite): the charge is made in the worker's memory, against the
  last value this worker saw in the shared store (its *seed*), so the worker goes on from where
  the budget stood rather than from zero. Memory holds only what changed during the outage.

When the shared store answers again, each charge made in memory is replayed to it under its
own id, a few per call, and taken out of memory. The ids matter: a call that timed out may
still have reached Redis (a hung server runs it when it wakes up), and its replay then changes
nothing, so every charge counts exactly once. Rate-limit buckets are not replayed: by then they
have refilled.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router.state import MemoryStore, Store, StoreUnavailable
from router.state.store import Charge, OnError, counter_value

log = logging.getLogger("router.budgets")

MAX_SEEN = 100_000
"""Counters whose last shared value a worker remembers (one per budget window in use)."""
LOCAL_KEYS = 100_000
MAX_REPLAY = 100_000
"""Charges made in memory that a worker keeps to replay (an outage of hours at 10 requests a
second); past it the oldest are dropped, and logged."""
REPLAY_PER_CALL = 16
"""Charges replayed after each call the shared store answers: the backlog drains without
holding any one request up for long."""


class Unavailable(Exception):
    """The shared store did not answer a reservation and budgets fail closed."""


@dataclass(frozen=True, slots=True)
class Charged:
    """What :meth:`Counters.charge` did."""

    applied: bool
    values: list[int]
    """Each key's value afterwards (as it stands, when refused)."""
    local: bool = False
    """Served from this worker's memory: the shared store did not answer."""


class Counters:
    """Charges on the shared store, with this worker's memory standing in when it fails."""

    def __init__(self, store: Store, on_error: OnError,
                 on_fallback: Callable[[str, BaseException], None] | None = None) -> None:
        self.name = store.name
        self.on_error = on_error
        self._shared = store.strict()
        self._local = MemoryStore(LOCAL_KEYS)
        self._on_fallback = on_fallback
        self._seen: dict[str, int] = {}
        self._replay: deque[tuple[list[Charge], str]] = deque()
        self._down = False
        self._replaying = False

    @property
    def backlog(self) -> int:
        """Charges made in memory not yet replayed to the shared store."""
        return len(self._replay)

    async def charge(self, charges: Sequence[Charge], now_us: int, once: str, *,
                     may_refuse: bool) -> Charged:
        """Apply ``charges`` all or none (see :class:`router.state.store.Charge`).

        Raises:
            Unavailable: the shared store did not answer, ``may_refuse`` is set and budgets
                fail closed.
        """
        try:
            applied, values = await self._shared.charge(charges, now_us, once)
        except StoreUnavailable as err:
            self._went_down(err)
            if may_refuse and self.on_error == "closed":
                raise Unavailable(str(err)) from err
            return await self._locally(charges, now_us, once)
        if len(self._seen) > MAX_SEEN:
            self._seen.clear()
        for c, value in zip(charges, values, strict=True):
            if not c.bucket:
                self._seen[c.key] = value
        if self._down or self._replay:
            await self._catch_up(now_us)
        return Charged(applied, values)

    async def values(self, keys: list[str]) -> tuple[list[int], bool]:
        """Return the counters' values, and whether they come from this worker's memory (the
        shared store did not answer: the last values seen plus what changed here since)."""
        local = [counter_value(v, k) for k, v in
                 zip(keys, await self._local.get_many(keys), strict=True)]
        try:
            shared = await self._shared.get_many(keys)
        except StoreUnavailable as err:
            self._went_down(err)
            return [self._seen.get(k, 0) + v for k, v in zip(keys, local, strict=True)], True
        # Plus what this worker still has to replay.
        return [counter_value(s, k) + v for s, k, v in zip(shared, keys, local, strict=True)], \
            False

    async def _locally(self, charges: Sequence[Charge], now_us: int, once: str) -> Charged:
        """Charge this worker's memory, against the last values seen in the shared store."""
        seeds = [0 if c.bucket else self._seen.get(c.key, 0) for c in charges]
        shifted = [c if c.bucket or c.limit is None else
                   dataclasses.replace(c, limit=c.limit - seed)
                   for c, seed in zip(charges, seeds, strict=True)]
        applied, values = await self._local.charge(shifted, now_us)
        counters = [dataclasses.replace(c, limit=None) for c in charges if not c.bucket]
        if applied and counters:
            if len(self._replay) >= MAX_REPLAY:
                lost, _ = self._replay.popleft()
                log.error({"event": "budgets_replay_dropped", "keys": [c.key for c in lost]})
            self._replay.append((counters, once))
        return Charged(applied, [v + s for v, s in zip(values, seeds, strict=True)], local=True)

    async def _catch_up(self, now_us: int) -> None:
        """Replay a few of the charges made in memory to the shared store, each under its own
        id, taking each out of memory once the shared store has it."""
        if self._down:
            self._down = False
            log.warning({"event": "budgets_store_recovered", "backend": self.name,
                         "to_replay": len(self._replay)})
        if self._replaying:
            return  # another task of this worker is at it: one replays, in order
        self._replaying = True
        try:
            for _ in range(min(REPLAY_PER_CALL, len(self._replay))):
                charges, once = self._replay[0]
                try:
                    await self._shared.charge(charges, now_us, once)
                except StoreUnavailable as err:
                    self._went_down(err)
                    return
                self._replay.popleft()
                await self._local.charge([dataclasses.replace(c, amount=-c.amount)
                                          for c in charges], now_us)
        finally:
            self._replaying = False

    def _went_down(self, err: StoreUnavailable) -> None:
        if self._on_fallback is not None:
            self._on_fallback(self.name, err)
        if not self._down:
            self._down = True
            log.warning({"event": "budgets_store_unavailable", "backend": self.name,
                         "error": str(err), "on_error": self.on_error,
                         "meanwhile": "refusing requests with limits" if self.on_error ==
                         "closed" else "counting in this worker's memory"})
