"""The request ledger: one record per request, written off the request path.

What a record holds (:class:`Entry`): when, who (a hash of the caller's key, the team), what was
asked (the requested model and the request's features), what the router decided and why (rule,
tier, model, conversation action, and the conversation's routing state as it was loaded), what
happened upstream (retries, fallbacks, status), what it used (tokens by kind) and cost (and
would have cost on the requested model), and how long it took. Never prompt or answer text: the
features are counts, flags and names, and the conversation is known by a hash. Only
``ledger.store_bodies: true`` keeps the request body, for staging.

The account stage hands each finished request to :meth:`Ledger.append`, which queues a
reference (about a microsecond). A task owned by the app's lifespan turns the queue into
records every ``flush_seconds``, in slices that give the event loop back between them, feeds
the shadow policy (:mod:`router.accounting.simulate`), and writes the batch to SQLite (and
JSONL) in a thread. ``router simulate`` reads the records back and re-runs them through a
candidate policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from router.accounting.entry import Context, Entry, context_of, entry_of
from router.accounting.replay import Replay
from router.config import Config
from router.routing.factor import FactorLearner
from router.state.sqlite import state_dir

if TYPE_CHECKING:
    from router.accounting.account import Record
    from router.accounting.ledger_files import LedgerFiles
    from router.accounting.metrics import Metrics
    from router.routing.rules import Policy

FILE_NAME = "ledger.db"
SLICE = 32
"""Records built between two yields to the event loop: a slice takes well under a millisecond,
so requests in flight barely notice the flush."""

log = logging.getLogger("router.ledger")


def ledger_path(config: Config) -> Path:
    """The ledger's SQLite file: ``ledger.dir``, else the state directory, + ``ledger.db``."""
    directory = config.ledger.dir
    return (Path(directory).expanduser() if directory else state_dir(config.state.dir)) \
        / FILE_NAME


Pending = tuple["Record", Decimal | None, Decimal | None, float]


class Ledger:
    """The queue of finished requests and the task that records them; one per worker, owned
    by the app's lifespan (:meth:`running`)."""

    def __init__(self, metrics: Metrics, learner: FactorLearner, *,
                 files: LedgerFiles | None = None, max_pending: int = 100_000,
                 flush_seconds: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.learner = learner
        self.files = files
        self.max_pending = max_pending
        self.flush_seconds = flush_seconds
        self.clock = clock
        self.shadow: Replay | None = None
        self._context: Context | None = None
        self._pending: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self._active = files is not None

    def configure(self, policy: Policy) -> None:
        """Adopt a (re)loaded live policy: its thresholds and tiers, and its shadow (whose
        conversations start afresh when the candidate changes)."""
        self._context = context_of(policy)
        shadow = policy.shadow
        if shadow is None:
            self.shadow = None
        elif self.shadow is None or self.shadow.policy.loaded.sha256 != shadow.loaded.sha256:
            self.shadow = Replay(shadow)
        self._active = self.files is not None or self.shadow is not None

    def append(self, record: Record, cost: Decimal | None,
               counterfactual: Decimal | None) -> None:
        """Queue a finished request (the account stage's only ledger work)."""
        if not self._active:
            return
        pending = self._pending
        pending.append((record, cost, counterfactual, self.clock()))
        if len(pending) > self.max_pending:
            pending.popleft()
            self.metrics.bound(self.metrics.ledger_records, "dropped").inc()
        elif len(pending) == 4096:
            self._wake.set()

    async def flush(self) -> int:
        """Record everything queued so far; return how many records were written."""
        context = self._context
        if context is None or not self._pending:
            return 0
        batch: list[Entry] = []
        pending = self._pending
        done = 0
        while pending:
            record, cost, counterfactual, ended = pending.popleft()
            done += 1
            try:
                entry = entry_of(record, cost, counterfactual, ended, self.learner, context)
            except Exception:
                # A bug of ours in one record must not stop the ledger: counted, logged.
                log.exception({"event": "ledger_record_failed", "request_id": record.request_id})
                self.metrics.bound(self.metrics.ledger_records, "failed").inc()
                continue
            batch.append(entry)
            if self.shadow is not None:
                self._shadow(entry)
            if done % SLICE == 0:
                await asyncio.sleep(0)
        if self.files is None:
            return 0
        try:
            await asyncio.to_thread(self.files.write, batch)
        except Exception:
            # The ledger is a record of the traffic, never a reason to fail it.
            log.exception({"event": "ledger_write_failed", "records": len(batch)})
            self.metrics.bound(self.metrics.ledger_records, "failed").inc(len(batch))
            return 0
        self.metrics.bound(self.metrics.ledger_records, "written").inc(len(batch))
        return len(batch)

    def _shadow(self, entry: Entry) -> None:
        assert self.shadow is not None
        try:
            step = self.shadow.step(entry)
        except Exception:
            log.exception({"event": "shadow_failed", "request_id": entry.request_id})
            return
        if step is None:
            return
        metrics = self.metrics
        metrics.bound(metrics.shadow_decisions, step.tier, metrics.rule_label(step.rule)).inc()
        if step.cost is not None:
            metrics.shadow_cost.inc(float(step.cost))

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_seconds)
            self._wake.clear()
            await self.flush()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Ledger]:
        """Run the recording task for the lifespan of the app; flush what is left at exit."""
        for result in ("written", "dropped", "failed"):
            self.metrics.bound(self.metrics.ledger_records, result)
        task = asyncio.get_running_loop().create_task(self._run())
        try:
            yield self
        finally:
            # Not cancelled: records a flush has taken off the queue are only in its hands
            # until it writes them. It finishes, then what is left is flushed.
            self._stopping = True
            self._wake.set()
            await task
            await self.flush()
            if self.files is not None:
                await asyncio.to_thread(self.files.close)
