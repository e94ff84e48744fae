"""The rules' part of a decision: which rule wins, the bounds of the matching guards, the
context window and the model's capabilities, the fallbacks. It reads a few features and the
request's limits, never the conversation, so it is memoised per policy by what it reads:
``router simulate`` replays a million records and the proxy routes every request through it,
and both mostly meet the same handful of combinations.

The memo's key (:class:`Reads`) holds every input the rules' decision reads, reduced to what
can change it: the features the rules test (a number as its place among the constants the
rules compare it with), the requested model, the thinking mode and betas, and the request's
size only when it exceeds the smallest context window or output limit (below them every window
check passes, whatever the size).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NamedTuple

import msgspec

from router.config import TIERS, Config, Tier
from router.routing.capabilities import Needs, unmet_limit
from router.routing.features import Features
from router.routing.rules import Policy, Rule, leaf_tests

RANKS: dict[str, int] = {tier: rank for rank, tier in enumerate(TIERS)}
MEMO_SIZE = 4096
"""Distinct rulings kept per policy; when full the memo starts again (clients choose models
and headers, so it must be bounded)."""


@dataclass(frozen=True, slots=True)
class Trace:
    """How one rule fared, for ``explain``."""

    rule: str
    matched: bool
    condition: str
    effect: str


class Decision(msgspec.Struct, frozen=True):
    """Where a request goes (a Struct: several are built for every request, and for every
    record ``router simulate`` replays, at a fifth of a frozen dataclass's cost)."""

    model: str
    """The model id sent upstream."""
    tier: Tier | None
    """The tier of that model, or None when it belongs to none."""
    rule: str
    """The name of the rule that decided (or ``default``, ``passthrough``, ``conversation``)."""
    reason: str
    """One line a person can read."""
    trace: tuple[Trace, ...] = ()
    """Every rule tried, when asked for (``explain``)."""
    fallbacks: tuple[str, ...] = ()
    """Models to try, in order, if ``model`` stays overloaded or unavailable."""
    action: str = "request"
    """What the conversation did: ``new``, ``stay``, ``up``, ``down``, ``tool-loop``,
    ``signature``, ``sticky``, ``turn``; ``request`` when no conversation was considered,
    ``passthrough`` for an unknown model."""
    strip: frozenset[str] = frozenset()
    """Hashes of thinking signatures to remove from the history before sending: another model
    signed them."""
    drop: tuple[str, ...] = ()
    """Request fields to remove before sending: ``thinking`` (a tool loop forced off its model
    with ``enabled`` thinking cannot show the new model a thinking block of its own; adaptive
    thinking on a model without it) and ``effort`` (a level the model does not take)."""


class Bounds(NamedTuple):
    """The floor and cap of the matching guards, as tier ranks."""

    floor: int
    cap: int

    def of(self, tier: Tier) -> Tier:
        """``tier`` moved within the bounds."""
        return TIERS[min(max(RANKS[tier], self.floor), self.cap)]


def bounds_of(rules: Iterable[Rule]) -> Bounds:
    """The bounds a set of matching rules sets."""
    floor, cap = 0, len(TIERS) - 1
    for rule in rules:
        if rule.floor:
            floor = max(floor, RANKS[rule.floor])
        if rule.cap:
            cap = min(cap, RANKS[rule.cap])
    return Bounds(floor, cap)


@dataclass(frozen=True, slots=True)
class Ruling:
    """The rules' verdict on a request alone."""

    requested: str
    """The requested model, resolved (a tier name becomes its model)."""
    winner: Rule | None
    bounds: Bounds
    decision: Decision
    kind: str
    """``passthrough`` (final: no tier, no rule for it), ``pin`` (the requested model, no
    guards) or ``ruled`` (the conversation and the capabilities still have their say)."""


def ruling(features: Features, policy: Policy, needs: Needs | None, *, explain: bool = False,
           bound: Rule | None = None) -> Ruling:
    """The rules' verdict on a request (memoised unless ``explain`` or a ``bound`` is given)."""
    if explain or bound is not None:
        return _rule(features, policy, needs, explain, bound)
    reads = policy.memo.get(Reads)
    if reads is None:
        reads = policy.memo[Reads] = Reads(policy)
    key = reads.key(features, needs)
    memo = reads.memo
    found = memo.get(key)
    if found is None:
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        found = memo[key] = _rule(features, policy, needs, False, None)
    return found


class Reads:
    """What the rules' decision of one policy reads of a request, as a memo key; and the memo."""

    def __init__(self, policy: Policy) -> None:
        plain: set[str] = {"requested_model"}
        numbers: dict[str, set[float]] = {}
        for rule in policy.rules:
            for test in leaf_tests(rule.condition):
                if test.kind == "number":
                    values = test.value if isinstance(test.value, tuple) else (test.value,)
                    numbers.setdefault(test.feature, set()).update(values)
                else:
                    plain.add(test.feature)
        self._plain: Callable[[Any], Any] = attrgetter(*sorted(plain))
        self._numbers = [(attrgetter(name), sorted(values))
                         for name, values in sorted(numbers.items())]
        config = policy.config
        caps = list(config.models.values())
        self._window = min([t.context_window for t in config.tiers.values()]
                           + [c.context_window for c in caps])
        self._output = min([c.max_output_tokens for c in caps], default=float("inf"))
        self.memo: dict[Hashable, Ruling] = {}

    def key(self, features: Features, needs: Needs | None) -> Hashable:
        """Equal for two requests only if the rules decide them alike."""
        places = []
        for value_of, constants in self._numbers:
            value = value_of(features)
            place = bisect_left(constants, value)
            places.append((place, place < len(constants) and constants[place] == value))
        size: Any = None
        needed = features.input_tokens + features.max_tokens
        if needs is None:
            if needed > self._window:
                size = needed
        elif (needed > self._window or needs.tokens > self._window
              or needs.max_tokens > self._output):
            # Past a window the size decides, and the reason quotes it.
            size = (needed, needs.tokens, needs.max_tokens)
        limits = (needs.thinking, needs.betas) if needs is not None else None
        return self._plain(features), tuple(places), size, limits


def _rule(features: Features, policy: Policy, needs: Needs | None, explain: bool,
          bound: Rule | None) -> Ruling:
    config = policy.config
    requested = config.resolve_model(features.requested_model)
    winner, guards, trace = _matching(features, policy, explain)
    if bound is not None:
        guards.append(bound)
    bounds = bounds_of(guards)
    traced = tuple(trace)
    if policy.tier_of(requested) is None and not (winner and winner.names_requested_model):
        return Ruling(requested, winner, bounds,
                      Decision(requested, None, "passthrough",
                               "no tier or rule names this model: sent as asked", traced,
                               action="passthrough"), "passthrough")
    if winner is not None and winner.pin:
        return Ruling(requested, winner, bounds,
                      Decision(requested, policy.tier_of(requested), winner.name,
                               "pinned to the requested model", traced), "pin")
    return Ruling(requested, winner, bounds,
                  _ruled(features, policy, winner, bounds, requested, needs, traced), "ruled")


def _matching(features: Features, policy: Policy, explain: bool
              ) -> tuple[Rule | None, list[Rule], list[Trace]]:
    """Return the winning routing rule, the matching guards (and the winner if it bounds), and
    the trace."""
    trace: list[Trace] = []
    winner: Rule | None = None
    bounds: list[Rule] = []
    for rule in policy.rules:
        if winner is not None and rule.routes:
            if explain:
                trace.append(Trace(rule.name, False, rule.condition.describe(), "not tried"))
            continue
        matched = rule.condition(features)
        if matched:
            if rule.routes:
                winner = rule
            if rule.cap or rule.floor:
                bounds.append(rule)
        if explain:
            effect = effect_of(rule) if matched else "no match"
            trace.append(Trace(rule.name, matched, rule.condition.describe(), effect))
    return winner, bounds, trace


def _ruled(features: Features, policy: Policy, winner: Rule | None, bounds: Bounds,
           requested: str, needs: Needs | None, trace: tuple[Trace, ...]) -> Decision:
    """The rules' decision for the request alone: target, bounds, window and capabilities."""
    config = policy.config
    if winner is None:
        name, reason = "default", "no rule matched"
        target = requested if config.default == "requested" else config.default
    else:
        name, reason = winner.name, winner.description or effect_of(winner)
        target = winner.tier or winner.model or requested
    model = config.resolve_model(target)
    tier = policy.tier_of(model)
    if tier is None:
        return Decision(model, None, name, reason, trace)
    bounded = bounds.of(tier)
    fitting = _fitting(config, bounded, features.input_tokens + features.max_tokens)
    if fitting != tier:
        reason += f"; {'bounded' if fitting == bounded else 'context'} to {fitting}"
        model, tier = config.tier_model(fitting), fitting
    if not can_serve(policy, model, needs):
        capable, why = capable_tier(policy, tier, needs)
        reason += f"; {why}: moved to {capable}"
        model, tier = config.tier_model(capable), capable
    return Decision(model, tier, name, reason, trace,
                    fallbacks_of(policy, tier, model, bounds, features, needs))


def capable_tier(policy: Policy, tier: Tier, needs: Needs | None) -> tuple[Tier, str]:
    """Return the nearest tier whose model can serve the request (preferring up), and why the
    given one cannot; the tier itself when it can (or when none can: the upstream decides)."""
    if needs is None:
        return tier, ""
    config = policy.config
    why = unmet_limit(config.tier_model(tier), policy.caps_of(config.tier_model(tier)), needs,
                      policy.model_betas)
    if why is None:
        return tier, ""
    rank = TIERS.index(tier)
    for candidate in (tier, *TIERS[rank + 1:], *reversed(TIERS[:rank])):
        model = config.tier_model(candidate)
        if unmet_limit(model, policy.caps_of(model), needs, policy.model_betas) is None:
            return candidate, why
    return tier, why


def can_serve(policy: Policy, model: str, needs: Needs | None) -> bool:
    """Whether ``model`` can take the request (always, without ``needs``)."""
    return needs is None or unmet_limit(model, policy.caps_of(model), needs,
                                        policy.model_betas) is None


def fallbacks_of(policy: Policy, tier: Tier, model: str, bounds: Bounds, features: Features,
                 needs: Needs | None) -> tuple[str, ...]:
    """The models to fall back to from ``model`` (of ``tier``): its tier's fallbacks within the
    bounds, the window and the capabilities."""
    config = policy.config
    fallbacks = config.tiers[tier].fallbacks
    if not fallbacks:
        return ()
    needed = features.input_tokens + features.max_tokens
    return tuple(
        config.tier_model(t) for t in fallbacks
        if bounds.of(t) == t and config.tiers[t].context_window >= needed
        and config.tier_model(t) != model and can_serve(policy, config.tier_model(t), needs)
    )


def effect_of(rule: Rule) -> str:
    """What a rule does, in a few words."""
    if rule.pin:
        return "pin the requested model"
    parts = []
    if rule.tier or rule.model:
        parts.append(f"route to {rule.tier or rule.model}")
    if rule.floor:
        parts.append(f"floor {rule.floor}")
    if rule.cap:
        parts.append(f"cap {rule.cap}")
    return ", ".join(parts)


def _fitting(config: Config, tier: Tier, needed_tokens: int) -> Tier:
    """Return ``tier``, or the first tier above it whose window holds ``needed_tokens``."""
    for candidate in TIERS[TIERS.index(tier):]:
        if config.tiers[candidate].context_window >= needed_tokens:
            return candidate
    return max(TIERS, key=lambda t: config.tiers[t].context_window)
