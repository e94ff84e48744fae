"""Budgets' view of the state store: the shared backend, or this worker's memory while the
backend cannot answer, reconciled when it is back.

Every reserve and settle is one :meth:`router.state.Store.charge` on the shared store's strict
view (one round trip; an id makes a retried call apply once). When it fails:

* ``state.on_redis_error: closed``: a reservation raises :class:`Unavailable` (the pipeline
  refuses the request); a settlement is still kept, as below, so that spend is never lost.
* ``open`` (and always for SQLite): the charge is made in the worker's memory, against the
  last value this worker saw in the shared store (a *seed*), so each worker goes on from where
  the budget stood rather than from zero. Memory holds only what changed during the outage.
  When the shared store answers again, those changes are added to it in one charge with an id
  of its own (retried as it was if its reply is lost, so it is counted exactly once), and
  memory forgets them. Rate-limit buckets are not carried over: by then they have refilled.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router.state import MemoryStore, Store, StoreUnavailable
from router.state.store import Charge, OnError, counter_value

log = logging.getLogger("router.budgets")

MAX_SEEN = 100_000
"""Counters whose last shared value a worker remembers (one per budget window in use)."""
LOCAL_KEYS = 100_000


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
        self._owed: dict[str, float] = {}
        """Counter keys changed in memory during an outage, with their time-to-live."""
        self._pending: tuple[list[Charge], str] | None = None
        """A hand-back whose reply was lost: retried as it was, under the same id."""
        self._worker = uuid.uuid4().hex[:12]
        self._handbacks = 0
        self._down = False

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
            return await self._locally(charges, now_us)
        if len(self._seen) > MAX_SEEN:
            self._seen.clear()
        for c, value in zip(charges, values, strict=True):
            if not c.bucket:
                self._seen[c.key] = value
        if self._down or self._owed or self._pending:
            await self._hand_back(now_us)
        return Charged(applied, values)

    async def values(self, keys: list[str]) -> tuple[list[int], bool]:
        """Return the counters' values, and whether they come from this worker's memory (the
        shared store did not answer: last seen values plus what changed here since)."""
        try:
            raw = await self._shared.get_many(keys)
        except StoreUnavailable as err:
            self._went_down(err)
            local = await self._local.get_many(keys)
            return [self._seen.get(k, 0) + counter_value(v, k) for k, v in
                    zip(keys, local, strict=True)], True
        values = [counter_value(v, k) for k, v in zip(keys, raw, strict=True)]
        # Only settled state is shown while memory still owes the shared store something.
        owed = await self._local.get_many(keys) if self._owed else [None] * len(keys)
        return [v + counter_value(o, k) for v, o, k in zip(values, owed, keys, strict=True)], \
            False

    async def _locally(self, charges: Sequence[Charge], now_us: int) -> Charged:
        """Charge this worker's memory, against the last values seen in the shared store."""
        seeds = [0 if c.bucket else self._seen.get(c.key, 0) for c in charges]
        shifted = [c if c.bucket or c.limit is None else
                   dataclasses.replace(c, limit=c.limit - seed)
                   for c, seed in zip(charges, seeds, strict=True)]
        applied, values = await self._local.charge(shifted, now_us)
        for c in charges:
            if not c.bucket and applied:
                self._owed[c.key] = max(self._owed.get(c.key, 0.0), c.ttl_seconds)
        return Charged(applied, [v + s for v, s in zip(values, seeds, strict=True)], local=True)

    async def _hand_back(self, now_us: int) -> None:
        """Add what memory counted during an outage to the shared store, exactly once."""
        if self._down:
            self._down = False
            log.warning({"event": "budgets_store_recovered", "backend": self.name,
                         "handing_back": len(self._owed)})
        if self._pending is None and self._owed:
            keys = list(self._owed)
            held = await self._local.get_many(keys)
            amounts = {k: counter_value(v, k) for k, v in zip(keys, held, strict=True)}
            charges = [Charge(k, n, self._owed[k]) for k, n in amounts.items() if n]
            self._owed.clear()
            # Out of memory before the shared store has it: a charge made meanwhile stays.
            await self._local.charge([Charge(c.key, -c.amount, c.ttl_seconds) for c in charges],
                                     now_us)
            self._handbacks += 1
            self._pending = (charges, f"handback:{self._worker}:{self._handbacks}")
        if self._pending is None:
            return
        charges, once = self._pending
        try:
            await self._shared.charge(charges, now_us, once)
        except StoreUnavailable as err:
            self._went_down(err)
            return
        self._pending = None

    def _went_down(self, err: StoreUnavailable) -> None:
        if self._on_fallback is not None:
            self._on_fallback(self.name, err)
        if not self._down:
            self._down = True
            log.warning({"event": "budgets_store_unavailable", "backend": self.name,
                         "error": str(err), "on_error": self.on_error,
                         "meanwhile": "refusing requests with limits" if self.on_error ==
                         "closed" else "counting in this worker's memory"})
