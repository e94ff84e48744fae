"""What a candidate policy would have done with recorded traffic, and what it would have cost.

``router simulate`` and the shadow policy (``shadow:`` in router.yaml) share one engine,
:class:`Replay`, fed ledger records (:mod:`router.accounting.ledger`) in order of arrival:

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

import dataclasses
import multiprocessing
import os
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from router.accounting.cost import ZERO, PriceTable, Tokens
from router.accounting.ledger import ConversationSeen, Entry
from router.config import TIERS
from router.routing.capabilities import Needs
from router.routing.conversations import (
    Conversation,
    ConversationState,
    History,
    state_after,
)
from router.routing.decide import Decision, decide
from router.routing.features import Features
from router.routing.rules import Policy
from router.routing.scorer import default_scorer

OTHER = "other"
MAX_CONVERSATIONS = 200_000
"""Candidate conversation states kept at once (least recently continued dropped first)."""
WHO = ("app", "user_agent", "user_id", "session_id", "request_class", "agent_id",
       "is_subagent", "compaction", "api_key_alias")
"""Features that come from headers: kept as recorded when a stored body is classified again."""


@dataclass(frozen=True, slots=True)
class Step:
    """One recorded request, decided again by the candidate."""

    entry: Entry
    decision: Decision
    model: str | None
    """The model the request is priced on (a recorded fallback's, if the choice is the same)."""
    usage: Tokens
    """Its usage there, as recorded or estimated."""
    cost: Decimal | None
    """At the candidate's prices; None when the model has no price or nothing was billed."""

    @property
    def tier(self) -> str:
        """The candidate's tier (``other`` for a model in none)."""
        return self.decision.tier or OTHER

    @property
    def rule(self) -> str:
        """The candidate's deciding rule."""
        return self.decision.rule


@dataclass(slots=True)
class _Track:
    """The candidate's side of one conversation."""

    state: ConversationState | None
    diverged: bool = False
    """A turn went to another model than recorded: from then on the state is the candidate's
    own."""


@dataclass(slots=True)
class _Shared:
    """The prefix a caller's conversations share (its system prompt and tools), and on which
    models it is warm, as recorded and in the candidate's world."""

    size: float = 0.0
    """Its length in estimated tokens (a model's tokens divided by its factor): what the first
    turn of a conversation read from a cache it had not written."""
    live: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Model -> (when it cools, estimated tokens) of the caller's latest cached prefix there,
    as recorded."""
    candidate: dict[str, tuple[float, float]] = field(default_factory=dict)
    """The same where the candidate sent the caller's requests."""


class Replay:
    """Decides recorded requests again under a candidate policy, conversation by conversation.

    Feed it records in order of arrival; it keeps each conversation's candidate state between
    turns (bounded: :data:`MAX_CONVERSATIONS`).
    """

    def __init__(self, policy: Policy, *, reclassify: bool = True) -> None:
        self.policy = policy
        self.prices = PriceTable(policy.config.pricing)
        self.scorer = default_scorer()
        self.thresholds = self.scorer.thresholds(policy.config.complexity)
        self.memory_seconds = policy.config.conversations.memory_seconds
        self.reclassify = reclassify
        self.priors = {t.model: t.token_factor for t in policy.config.tiers.values()}
        self._tracks: OrderedDict[str, _Track] = OrderedDict()
        self._counter: Any = None
        self._requested_tiers: dict[str, str] = {}
        self._histories: dict[tuple[bool, int, int], History] = {}
        self._shared: OrderedDict[str, _Shared] = OrderedDict()

    def step(self, entry: Entry) -> Step | None:
        """Decide one record again; None when it never reached routing (a bad request, the
        model list), which no policy changes."""
        features = entry.features
        if entry.rule is None or entry.model is None or features is None:
            return None
        features = self._features(entry, features)
        seen = entry.conversation
        track = self._track(seen)
        conversation = self._conversation(entry, seen, track)
        needs = Needs(tokens=features.input_tokens + features.max_tokens,
                      max_tokens=features.max_tokens, thinking=entry.thinking,
                      effort=features.effort,
                      betas=frozenset(entry.betas) if entry.betas else _NO_BETAS)
        down = entry.unavailable
        available = (lambda m: m not in down) if down else _always
        decision = decide(features, self.policy, needs=needs, conversation=conversation,
                          available=available)
        if entry.budget_cap in TIERS:
            # A budget near its limit capped the request: the candidate meets the same cap.
            from router.pipeline import budget_bound

            capped = decide(features, self.policy, needs=needs, conversation=conversation,
                            available=available, bound=budget_bound(entry.budget_cap, "budget"))
            if capped.model != decision.model:
                decision = dataclasses.replace(capped, rule="budget")
        source = entry.priced_model
        # The same choice meets the same fate: a recorded fallback happens again.
        target = source if decision.model == entry.model else decision.model
        usage = entry.usage
        if seen is not None and track is not None and conversation is not None:
            live, state = seen.state, conversation.state
            shared = self._shared_of(entry.caller or "")
            warm = (_warm(live, source, seen.now), _warm(state, target, seen.now),
                    self._shared_warm(entry, shared.live, source, shared, seen.now),
                    self._shared_warm(entry, shared.candidate, target, shared, seen.now))
            if target != source or state is not live or warm[2] != warm[3]:
                lasting = any(c.ttl > 300 for c in (state.caches.values() if state else ()))
                usage = self.repriced(entry, source, target, *warm, lasting=lasting)
            self._remember(entry, features, track, state, target, target != source, usage)
            self._share(entry, shared, source, target, usage)
        elif target != source:
            usage = self.repriced(entry, source, target, 0, 0, 0, 0)
        cost = None
        if target is not None and (usage.input_side or usage.output or usage.web_searches):
            cost = self.prices.cost_of(target, usage, inference_geo=entry.inference_geo,
                                       service_tier=entry.service_tier)
        return Step(entry, decision, target, usage, cost)

    # -- features

    def _features(self, entry: Entry, features: Features) -> Features:
        """The features the candidate sees: classified again from a stored body, the
        ``complexity`` level under its thresholds, the requested tier under its tiers."""
        if entry.body is not None and self.reclassify:
            features = self._classified(entry, features)
        changes: dict[str, Any] = {}
        if entry.thresholds is not None and entry.thresholds != self.thresholds:
            level = self.scorer.level(features.complexity_score, self.policy.config.complexity)
            if level != features.complexity:
                changes["complexity"] = level
        tier = self._requested_tiers.get(features.requested_model)
        if tier is None:
            config = self.policy.config
            tier = self.policy.tier_of(config.resolve_model(features.requested_model)) or OTHER
            if len(self._requested_tiers) < 4096:  # clients name models: bounded
                self._requested_tiers[features.requested_model] = tier
        if tier != features.requested_tier:
            changes["requested_tier"] = tier
        if not changes:
            return features
        if isinstance(features, tuple):  # a FeatureRow, as router simulate reads them
            return features._replace(**changes)
        return dataclasses.replace(features, **changes)

    def _classified(self, entry: Entry, recorded: Features) -> Features:
        from router.errors import RouterError
        from router.parse import parse_messages
        from router.routing.classify import classify
        from router.routing.tokens import TokenCounter

        assert entry.body is not None
        if self._counter is None:
            self._counter = TokenCounter.load()
        try:
            parsed = parse_messages(entry.body.encode(), {})
        except RouterError:
            return recorded
        requested = self.policy.config.resolve_model(recorded.requested_model)
        factor = entry.factors.get(requested, self.priors.get(requested, 1.0))
        fresh = classify(parsed, self._counter.estimate(parsed.request), token_factor=factor,
                         requested_tier=recorded.requested_tier,
                         complexity=self.policy.config.complexity)
        return dataclasses.replace(fresh, **{name: getattr(recorded, name) for name in WHO})

    # -- conversations

    def _track(self, seen: ConversationSeen | None) -> _Track | None:
        if seen is None:
            return None
        tracks = self._tracks
        track = tracks.get(seen.id)
        if track is None:
            track = tracks[seen.id] = _Track(None)
            if len(tracks) > MAX_CONVERSATIONS:
                tracks.popitem(last=False)
        else:
            tracks.move_to_end(seen.id)
        return track

    def _conversation(self, entry: Entry, seen: ConversationSeen | None,
                      track: _Track | None) -> Conversation | None:
        """The conversation as the candidate would have loaded it."""
        if seen is None or track is None:
            return None
        live = seen.state
        state = live
        signers = seen.signers
        if track.diverged:
            own = track.state
            fresh = own is not None and seen.now - own.updated_at <= self.memory_seconds
            state = own if fresh else None
            if live is not None and state is not None and live.model != state.model:
                # What the recorded model signed, the candidate's model signed.
                signers = tuple(state.model if s == live.model else s for s in signers)
        key = (seen.tool_loop, len(signers), seen.latest)
        history = self._histories.get(key)
        if history is None:
            # Signatures are known by position: stand-in hashes serve as well as the real ones.
            hashes = tuple(f"s{i}" for i in range(len(signers)))
            history = History(seen.tool_loop, hashes[len(hashes) - seen.latest:], hashes)
            if len(self._histories) < 4096:
                self._histories[key] = history
        owners = {h: s for h, s in zip(history.signatures, signers, strict=True)
                  if s is not None} if signers else {}
        return Conversation(seen.id, entry.caller or "", history, state, owners, seen.now,
                            seen.caching)

    def _remember(self, entry: Entry, features: Features, track: _Track,
                  state: ConversationState | None, model: str | None, moved: bool,
                  usage: Tokens) -> None:
        """Keep the candidate's state after its answer, as the pipeline saves the live one."""
        if entry.status != 200 or entry.answered_by is None or model is None:
            return
        track.diverged = track.diverged or moved
        if not track.diverged:
            return
        track.state = state_after(
            state, model, now=entry.ts + entry.latency_ms / 1000,
            cache_read=usage.cache_read,
            cache_written=usage.cache_write_5m + usage.cache_write_1h,
            written_1h=bool(usage.cache_write_1h), output_tokens=usage.output,
            signed=entry.signed, estimate=features.input_tokens, uncached=usage.input)

    def _shared_of(self, caller: str) -> _Shared:
        shared = self._shared.get(caller)
        if shared is None:
            shared = self._shared[caller] = _Shared()
            if len(self._shared) > MAX_CONVERSATIONS:
                self._shared.popitem(last=False)
        return shared

    def _shared_warm(self, entry: Entry, warm: dict[str, tuple[float, float]],
                     model: str | None, shared: _Shared, now: float) -> int:
        """Tokens of the caller's shared prefix warm on ``model`` at ``now``."""
        if model is None or not shared.size:
            return 0
        cools, tokens = warm.get(model, (0.0, 0.0))
        if cools <= now:
            return 0
        return round(min(shared.size, tokens) * self.factor(entry, model))

    def _share(self, entry: Entry, shared: _Shared, source: str | None, target: str | None,
               usage: Tokens) -> None:
        """Learn the caller's shared prefix from a first turn's reads, and note where the
        recorded answer and the candidate's cached a prefix (which holds the shared one)."""
        recorded = entry.usage
        if (entry.status != 200 or entry.answered_by is None
                or not (recorded.cached or usage.cached)):
            return
        seen = entry.conversation
        if seen is not None and seen.state is None and recorded.cache_read and source:
            shared.size = recorded.cache_read / self.factor(entry, source)
        done = entry.ts + entry.latency_ms / 1000
        for warm, model, used in ((shared.live, source, recorded), (shared.candidate, target,
                                                                    usage)):
            if model is not None and used.cached:
                ttl = 3600.0 if used.cache_write_1h else 300.0
                warm[model] = (done + ttl, used.cached / self.factor(entry, model))

    # -- repricing

    def factor(self, entry: Entry, model: str) -> float:
        """Claude tokens per estimated token on ``model``: as recorded, else the candidate's
        configured factor for it, else 1."""
        return entry.factors.get(model) or self.priors.get(model, 1.0)

    def repriced(self, entry: Entry, source: str | None, target: str | None,
                 own_live: int, own_candidate: int, shared_live: int, shared_candidate: int,
                 *, lasting: bool = False) -> Tokens:
        """Estimate the usage of a recorded answer on ``target``, from its usage on ``source``.

        Input and output scale by the two models' token factors. Of the cached prefix, the
        part warm where the request goes is read and the rest written: warm is the longer of
        the conversation's own cache there (``own_*``, its tokens) and the caller's shared
        prefix there (``shared_*``), as recorded on ``source`` and in the candidate's world on
        ``target``. What the recorded reads differ from that account of them (a prefix that
        changed, reads the router never saw written) carries over. ``lasting``: the candidate's
        conversation caches for an hour, so its new writes would too.
        """
        u = entry.usage
        scale = 1.0
        if source is not None and target is not None and source != target:
            scale = self.factor(entry, target) / self.factor(entry, source)
        prefix = round(u.cached * scale)
        explained = min(prefix, max(own_live, shared_live) * scale)
        residual = u.cache_read * scale - explained
        cache_read = max(0, min(prefix, round(min(prefix, max(own_candidate, shared_candidate))
                                             + residual)))
        written = prefix - cache_read
        recorded_writes = u.cache_write_5m + u.cache_write_1h
        if recorded_writes:
            long = round(written * u.cache_write_1h / recorded_writes)
        else:
            long = written if lasting else 0
        return Tokens(input=round(u.input * scale), output=round(u.output * scale),
                      cache_read=cache_read, cache_write_5m=written - long, cache_write_1h=long,
                      web_searches=u.web_searches)


_NO_BETAS: frozenset[str] = frozenset()


def _always(model: str) -> bool:
    return True


def _warm(state: ConversationState | None, model: str | None, now: float) -> int:
    """Tokens ``state`` has cached on ``model`` at ``now``."""
    if state is None or model is None:
        return 0
    cache = state.caches.get(model)
    return cache.tokens if cache is not None and cache.expires_at > now else 0


# --------------------------------------------------------------------------- the report


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
    cells: dict[tuple[int, str], Tally] = field(default_factory=dict)
    """(UTC day number, the candidate's deciding rule) -> its tally."""
    moves: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(recorded tier, candidate tier) -> requests, for those that moved."""
    mixes: dict[int, tuple[Counter[str], Counter[str]]] = field(default_factory=dict)
    """UTC day number -> requests by tier as recorded, and with the candidate."""
    not_routed: int = 0
    """Records that never reached routing (bad requests, the model list)."""
    first: float | None = None
    last: float | None = None
    far: list[dict[str, Any]] = field(default_factory=list)
    """The first requests moved down more than one tier."""

    def add(self, step: Step) -> None:
        """Count one decided request."""
        entry = step.entry
        before, after = entry.tier or OTHER, step.decision.tier or OTHER
        day = int(entry.ts // DAY)
        key = (day, step.decision.rule)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Tally()
        cell.requests += 1
        if before != after:
            self.moves[(before, after)] += 1
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
                                             "rule": step.decision.rule,
                                             "was_rule": entry.rule})
        recorded, cost = entry.cost_usd, step.cost
        if (recorded is None) != (cost is None):
            cell.unpriced += 1
        elif recorded is not None and cost is not None:
            cell.before += Decimal(recorded)
            cell.after += cost
        mixes = self.mixes.get(day)
        if mixes is None:
            mixes = self.mixes[day] = (Counter(), Counter())
        mixes[0][before] += 1
        mixes[1][after] += 1

    def seen(self, entry: Entry) -> None:
        """Note a record's time (every record, routed or not)."""
        if self.first is None or entry.ts < self.first:
            self.first = entry.ts
        if self.last is None or entry.ts > self.last:
            self.last = entry.ts

    def merge(self, other: Report) -> None:
        """Add the report of another part of the same traffic (other conversations)."""
        for key, tally in other.cells.items():
            self.cells.setdefault(key, Tally()).merge(tally)
        self.moves.update(other.moves)
        for day, (before, after) in other.mixes.items():
            mine = self.mixes.setdefault(day, (Counter(), Counter()))
            mine[0].update(before)
            mine[1].update(after)
        self.not_routed += other.not_routed
        for ts in (other.first, other.last):
            if ts is not None:
                self.first = ts if self.first is None else min(self.first, ts)
                self.last = ts if self.last is None else max(self.last, ts)
        self.far = sorted([*self.far, *other.far], key=lambda f: f["ts"])[:FAR_EXAMPLES]

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


def _grouped(cells: Iterable[tuple[tuple[int, str], Tally]],
             group: Callable[[tuple[int, str]], str]) -> dict[str, Tally]:
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
    step, add, seen = replay.step, report.add, report.seen
    for entry in entries:
        seen(entry)
        decided = step(entry)
        if decided is None:
            report.not_routed += 1
        else:
            add(decided)
    return report


def simulate_ledger(path: Path, policy: Policy, since: float | None = None,
                    workers: int | None = None) -> Report:
    """Replay a ledger file's records since ``since`` through ``policy``, split by
    conversation across ``workers`` processes (default: one per core, at most 4); the report
    is the same as one process gives, sooner.

    Raises:
        LedgerError: the file cannot be read.
    """
    from router.accounting.ledger_files import LedgerError, Reader

    reader = Reader(path)
    count = workers or min(os.cpu_count() or 1, 4)
    if count == 1 or "fork" not in multiprocessing.get_all_start_methods():
        return simulate(reader.rows(since), policy)
    context = multiprocessing.get_context("fork")
    parts = []
    for k in range(count):
        receive, send = context.Pipe(duplex=False)
        process = context.Process(target=_simulate_part,
                                  args=(send, reader, policy, since, (k, count)), daemon=True)
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


def _simulate_part(send: Any, reader: Any, policy: Policy, since: float | None,
                   part: tuple[int, int]) -> None:
    """A forked process's share of :func:`simulate_ledger` (the policy is inherited, not
    pickled: its compiled rules are closures)."""
    try:
        send.send(simulate(reader.rows(since, part=part), policy))
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
