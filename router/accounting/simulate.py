"""What a candidate policy would have done with recorded traffic, and what it would have cost.

``router simulate`` and the shadow policy (``shadow:`` in router.yaml) share one engine,
:class:`router.accounting.replay.Replay`, fed ledger records (:mod:`router.accounting.entry`)
in order of arrival:

1. **Decide again.** The recorded features go through the candidate's rules with the real
   :func:`router.routing.decide.decide` (its ``complexity`` thresholds re-applied to the recorded
   score; with a stored body, the whole classifier re-run). A conversation is replayed with
   its own state: while the candidate keeps every turn on the recorded model the recorded state
   is used as it was; from the first turn it moves, the candidate's conversation has a state of
   its own, built from its own estimated answers (so its cache warms and cools where the
   candidate put it).
2. **Reprice.** A request the candidate sends where it went is priced as recorded (fallbacks
   included). One sent elsewhere is priced on the candidate's model: input and output scaled by
   the two models' token factors (recorded with the request), and the cached prefix split
   between reads and writes by what each side had warm: a read of the conversation's own cache
   becomes a write where the candidate's model is cold, a write becomes a read where the
   candidate's model is warm (reads of a prefix other conversations share carry over).
3. **Report** (:func:`simulate`): per rule and overall, requests moved between tiers, cost
   before (as recorded) and after (the candidate's prices), savings, and the requests moved down
   more than one tier.

The engine assumes the candidate's models were as available as the recorded ones, and answer
at the recorded length in their own tokens: the output a model writes is not knowable.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from router.accounting.cost import ZERO
from router.accounting.entry import Entry
from router.accounting.replay import OTHER, Replay, Step
from router.config import TIERS
from router.routing.rules import Policy


@dataclass
class Tally:
    """Requests, moves and cost of one slice of the traffic."""

    requests: int = 0
    up: int = 0
    down: int = 0
    down_far: int = 0
    """Moved down more than one tier (opus to haiku)."""
    before: Decimal = ZERO
    """Recorded cost, of the requests priced on both sides."""
    after: Decimal = ZERO
    """The candidate's cost of the same requests."""
    unpriced: int = 0
    """Requests with a cost on one side only, left out of both sums."""

    @property
    def moved(self) -> int:
        """Requests sent to another tier."""
        return self.up + self.down

    @property
    def saved(self) -> Decimal:
        """Before minus after."""
        return self.before - self.after

    def merge(self, other: Tally) -> None:
        """Add another slice's figures to this one."""
        self.requests += other.requests
        self.up += other.up
        self.down += other.down
        self.down_far += other.down_far
        self.before += other.before
        self.after += other.after
        self.unpriced += other.unpriced

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready figures (money as decimal text)."""
        return {"requests": self.requests, "moved": self.moved, "up": self.up,
                "down": self.down, "down_more_than_one_tier": self.down_far,
                "cost_before_usd": _money(self.before), "cost_after_usd": _money(self.after),
                "saved_usd": _money(self.saved), "unpriced": self.unpriced}


def _money(amount: Decimal) -> str:
    """Exact decimal text without trailing zeros or an exponent."""
    return f"{amount.normalize():f}"


RANKS: dict[str, int] = {tier: rank for rank, tier in enumerate(TIERS)}
DAY = 86400
FAR_EXAMPLES = 20


@dataclass
class Report:
    """What ``router simulate`` prints: tallies by UTC day and the candidate's rule, from which
    the totals, the per-rule and the per-day figures are summed."""

    candidate: str
    sha256: str
    cells: dict[tuple[int, str, str, str], Tally] = field(default_factory=dict)
    """(UTC day number, the candidate's deciding rule, recorded tier, candidate tier) -> its
    tally: one lookup a request, from which every other figure is summed."""
    not_routed: int = 0
    """Records that never reached routing (bad requests, the model list)."""
    first: float | None = None
    last: float | None = None
    far: list[dict[str, Any]] = field(default_factory=list)
    """The first requests moved down more than one tier."""

    def add(self, step: Step) -> None:
        """Count one decided request."""
        entry = step.entry
        decision = step.decision
        before, after = entry.tier or OTHER, decision.tier or OTHER
        key = (int(entry.ts // DAY), decision.rule, before, after)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Tally()
        cell.requests += 1
        if before != after:
            rank_before, rank_after = RANKS.get(before), RANKS.get(after)
            if rank_before is not None and rank_after is not None:
                if rank_after > rank_before:
                    cell.up += 1
                else:
                    cell.down += 1
                    if rank_before - rank_after > 1:
                        cell.down_far += 1
                        if len(self.far) < FAR_EXAMPLES:
                            self.far.append({"ts": entry.ts, "request_id": entry.request_id,
                                             "from": before, "to": after,
                                             "rule": decision.rule, "was_rule": entry.rule})
        recorded, cost = entry.cost_usd, step.cost
        if (recorded is None) != (cost is None):
            cell.unpriced += 1
        elif recorded is not None and cost is not None:
            cell.before += Decimal(recorded)
            cell.after += cost

    def merge(self, other: Report) -> None:
        """Add the report of another part of the same traffic (other conversations)."""
        for key, tally in other.cells.items():
            self.cells.setdefault(key, Tally()).merge(tally)
        self.not_routed += other.not_routed
        for ts in (other.first, other.last):
            if ts is not None:
                self.first = ts if self.first is None else min(self.first, ts)
                self.last = ts if self.last is None else max(self.last, ts)
        self.far = sorted([*self.far, *other.far], key=lambda f: f["ts"])[:FAR_EXAMPLES]

    @property
    def moves(self) -> Counter[tuple[str, str]]:
        """(recorded tier, candidate tier) -> requests, for those that moved."""
        moves: Counter[tuple[str, str]] = Counter()
        for (_, _, before, after), tally in self.cells.items():
            if before != after:
                moves[(before, after)] += tally.requests
        return moves

    @property
    def mixes(self) -> dict[int, tuple[Counter[str], Counter[str]]]:
        """UTC day number -> requests by tier as recorded, and with the candidate."""
        mixes: dict[int, tuple[Counter[str], Counter[str]]] = {}
        for (day, _, before, after), tally in self.cells.items():
            mix = mixes.setdefault(day, (Counter(), Counter()))
            mix[0][before] += tally.requests
            mix[1][after] += tally.requests
        return mixes

    @property
    def total(self) -> Tally:
        """All routed requests."""
        return _summed(self.cells.values())

    @property
    def by_rule(self) -> dict[str, Tally]:
        """By the candidate's deciding rule."""
        return _grouped(self.cells.items(), lambda key: key[1])

    @property
    def by_day(self) -> dict[str, Tally]:
        """By UTC day of arrival (``YYYY-MM-DD``)."""
        return _grouped(self.cells.items(), lambda key: _date(key[0]))

    @property
    def mix_before(self) -> Counter[str]:
        """Requests by recorded tier."""
        return sum((m[0] for m in self.mixes.values()), Counter())

    @property
    def mix_after(self) -> Counter[str]:
        """Requests by the candidate's tier."""
        return sum((m[1] for m in self.mixes.values()), Counter())

    @property
    def mix_by_day(self) -> dict[str, tuple[Counter[str], Counter[str]]]:
        """Requests by tier, as recorded and with the candidate, by UTC day."""
        return {_date(day): mixes for day, mixes in sorted(self.mixes.items())}

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "candidate": self.candidate, "sha256": self.sha256,
            "first": _iso(self.first), "last": _iso(self.last),
            "not_routed": self.not_routed,
            "total": self.total.as_dict(),
            "by_rule": {rule: t.as_dict() for rule, t in sorted(self.by_rule.items())},
            "by_day": {day: t.as_dict() for day, t in sorted(self.by_day.items())},
            "moves": [{"from": a, "to": b, "requests": n}
                      for (a, b), n in sorted(self.moves.items())],
            "tier_mix": {"before": dict(self.mix_before), "after": dict(self.mix_after)},
            "moved_down_more_than_one_tier": [
                {k: v for k, v in f.items() if k != "ts"} for f in self.far],
        }


def _summed(tallies: Iterable[Tally]) -> Tally:
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    return total


def _grouped(cells: Iterable[tuple[tuple[int, str, str, str], Tally]],
             group: Callable[[tuple[int, str, str, str]], str]) -> dict[str, Tally]:
    groups: dict[str, Tally] = {}
    for key, tally in cells:
        groups.setdefault(group(key), Tally()).merge(tally)
    return groups


def _date(day: int) -> str:
    return datetime.fromtimestamp(day * DAY, UTC).strftime("%Y-%m-%d")


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds") if ts else None


def simulate(entries: Iterable[Entry], policy: Policy, *, reclassify: bool = True) -> Report:
    """Replay records (oldest first) through ``policy`` and tally the difference."""
    replay = Replay(policy, reclassify=reclassify)
    report = Report(policy.loaded.source, policy.loaded.sha256)
    step, add = replay.step, report.add
    first = last = None
    for entry in entries:
        ts = entry.ts
        if first is None or ts < first:
            first = ts
        if last is None or ts > last:
            last = ts
        decided = step(entry)
        if decided is None:
            report.not_routed += 1
        else:
            add(decided)
    report.first, report.last = first, last
    return report


SHARES = 4
"""Fixed shares of whole conversations a ledger is replayed in, whatever the machine."""


def simulate_ledger(path: Path, policy: Policy, since: float | None = None,
                    workers: int | None = None) -> Report:
    """Replay a ledger file's records since ``since`` through ``policy``, in :data:`SHARES`
    shares of whole conversations spread over ``workers`` processes (default: one per core,
    at most :data:`SHARES`).

    Each share is replayed on its own, whatever the number of processes, so the report is the
    same on any machine. The price of the split: a caller's conversations in different shares
    do not see each other's shared prefix (a system prompt and tools) warm in the candidate's
    world, so the first of them in each share pays its write: at most ``SHARES - 1`` extra
    prefix writes per caller and model over the whole window.

    Raises:
        LedgerError: the file cannot be read.
    """
    from router.accounting.ledger_files import LedgerError, Reader

    reader = Reader(path)
    count = min(workers or os.cpu_count() or 1, SHARES)
    if count == 1 or "fork" not in multiprocessing.get_all_start_methods():
        return _simulate_shares(reader, policy, since, range(SHARES))
    context = multiprocessing.get_context("fork")
    parts = []
    for k in range(count):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_simulate_part,
                                  args=(send, reader, policy, since,
                                        range(k, SHARES, count)), daemon=True)
        process.start()
        send.close()
        parts.append((process, receive))
    report = Report(policy.loaded.source, policy.loaded.sha256)
    failure = None
    for process, receive in parts:
        try:
            result = receive.recv()
        except EOFError:
            result = f"a simulation process died (exit code {process.exitcode})"
        process.join()
        if isinstance(result, Report):
            report.merge(result)
        else:
            failure = failure or result
    if failure:
        raise LedgerError(failure)
    return report


def _simulate_shares(reader: Any, policy: Policy, since: float | None,
                     shares: Iterable[int]) -> Report:
    """Replay each of ``shares`` on its own, and the sum of their reports."""
    report = Report(policy.loaded.source, policy.loaded.sha256)
    for share in shares:
        report.merge(simulate(reader.rows(since, part=(share, SHARES)), policy))
    return report


def _simulate_part(send: Any, reader: Any, policy: Policy, since: float | None,
                   shares: Iterable[int]) -> None:
    """A forked process's shares of :func:`simulate_ledger` (the policy is inherited, not
    pickled: its compiled rules are closures)."""
    try:
        send.send(_simulate_shares(reader, policy, since, shares))
    except Exception as err:  # the parent reports it as one line
        send.send(str(err) or type(err).__name__)
    finally:
        send.close()


def render(report: Report, ledger: str = "") -> str:
    """The report as text for a terminal."""
    total = report.total
    span = f"from {_iso(report.first)} to {_iso(report.last)}" if report.first else "(empty)"
    lines = [
        f"candidate  {report.candidate} (sha256 {report.sha256[:12]})",
        f"ledger     {ledger + ': ' if ledger else ''}{total.requests + report.not_routed:,} "
        f"requests {span}, {total.requests:,} routed",
        "",
    ]
    head = ("rule (candidate)", "requests", "moved", "up", "down", "down>1", "before $",
            "after $", "saved $", "saved")
    rows = [[name, f"{t.requests:,}", f"{t.moved:,}", f"{t.up:,}", f"{t.down:,}",
             f"{t.down_far:,}", _usd(t.before), _usd(t.after), _usd(t.saved),
             f"{t.saved / t.before:.1%}" if t.before else "-"]
            for name, t in [*sorted(report.by_rule.items(), key=lambda kv: -kv[1].requests),
                            ("total", total)]]
    widths = [max(len(row[i]) for row in [list(head), *rows]) for i in range(len(head))]

    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    lines.append(line(head))
    lines += [line(row) for row in rows[:-1]]
    lines += ["  " + "-" * (sum(widths) + 2 * (len(widths) - 1)), line(rows[-1])]
    lines += ["", "tier moves (recorded -> candidate):"]
    if not report.moves:
        lines.append("  none: every request stays on its tier")
    for (a, b), n in sorted(report.moves.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {a:>7} -> {b:<7} {n:>10,}")
    lines += ["", "tier mix      " + "  ".join(f"{t:>8}" for t in (*TIERS, OTHER))]
    for label, mix in (("before", report.mix_before), ("after", report.mix_after)):
        lines.append(f"  {label:<12}" + "  ".join(f"{mix.get(t, 0):>8,}" for t in (*TIERS, OTHER)))
    far = total.down_far
    lines += ["", f"moved down more than one tier: {far:,}"
              + (" (e.g. " + ", ".join(f["request_id"] for f in report.far[:3]) + ")"
                 if far else "")]
    if total.unpriced:
        lines.append(f"priced on one side only (left out of the sums): {total.unpriced:,}")
    return "\n".join(lines)


def _usd(amount: Decimal) -> str:
    return f"{amount:,.4f}"
