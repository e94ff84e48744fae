"""Stage 3 of the pipeline: features + policy -> :class:`Decision` (which model, and why).

Pure: no I/O, no clock. The order of precedence, highest first:

1. Conversation safety: a request carrying thinking blocks from earlier turns stays on the model
   that made them (the session memory's, else the requested one), unless the winning rule says
   ``allow_model_switch``. Signatures are model-bound; another model would reject them.
2. Context windows: a tier whose window cannot hold the request is skipped for the next one up.
3. ``pin``: the requested model, untouched by guards.
4. The first routing rule that matches (else ``default``), then bounded by the ``cap``/``floor``
   of that rule and of every matching guard.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router.config import TIERS, Config, Tier
from router.routing.features import Features
from router.routing.rules import Policy, Rule


@dataclass(frozen=True, slots=True)
class Trace:
    """How one rule fared, for ``explain``."""

    rule: str
    matched: bool
    condition: str
    effect: str


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes."""

    model: str
    """The model id sent upstream."""
    tier: Tier | None
    """The tier of that model, or None when it belongs to none."""
    rule: str
    """The name of the rule that decided (or ``default``, ``alias``, ``conversation``)."""
    reason: str
    """One line a person can read."""
    trace: tuple[Trace, ...] = field(default=(), compare=False)
    """Every rule tried, when asked for (``explain``)."""
    fallbacks: tuple[str, ...] = ()
    """Models to try, in order, if ``model`` stays overloaded or unavailable."""


def decide(
    features: Features, policy: Policy, *, sticky_model: str | None = None, explain: bool = False
) -> Decision:
    """Choose the model for a request.

    Args:
        features: the request's features.
        policy: the compiled rules and tiers.
        sticky_model: the model this conversation used last, from the session memory.
        explain: record every rule tried in ``Decision.trace``.
    """
    config = policy.config
    requested = config.resolve_model(features.requested_model)
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
            effect = _effect(rule) if matched else "no match"
            trace.append(Trace(rule.name, matched, rule.condition.describe(), effect))

    # Neither of these two falls back: a pin means this model and no other, and thinking
    # signatures are valid only on the model that made them.
    if features.history_thinking and not (winner and winner.allow_model_switch):
        model = sticky_model or requested
        reason = "earlier turns carry thinking blocks signed by this model"
        return Decision(model, policy.tier_of(model), "conversation", reason, tuple(trace))

    if winner is not None and winner.pin:
        return Decision(requested, policy.tier_of(requested), winner.name,
                        "pinned to the requested model", tuple(trace))

    if winner is None:
        name, reason = "default", "no rule matched"
        target = requested if config.default == "requested" else config.default
    else:
        name, reason = winner.name, winner.description or _effect(winner)
        target = winner.tier or winner.model or requested
    model = config.resolve_model(target)
    tier = policy.tier_of(model)
    needed = features.input_tokens + features.max_tokens
    fallbacks: tuple[str, ...] = ()
    if tier is not None:
        bounded = _bounded(tier, bounds)
        fitting = _fitting(config, bounded, needed)
        if fitting != tier:
            model, tier = config.tier_model(fitting), fitting
            reason += f"; {'bounded' if fitting == bounded else 'context'} to {fitting}"
        fallbacks = tuple(
            config.tier_model(t) for t in config.tiers[tier].fallbacks
            if _bounded(t, bounds) == t and config.tiers[t].context_window >= needed
            and config.tier_model(t) != model
        )
    return Decision(model, tier, name, reason, tuple(trace), fallbacks)


def _effect(rule: Rule) -> str:
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


def _bounded(tier: Tier, bounds: list[Rule]) -> Tier:
    rank = TIERS.index(tier)
    floors = [TIERS.index(r.floor) for r in bounds if r.floor]
    caps = [TIERS.index(r.cap) for r in bounds if r.cap]
    if floors:
        rank = max(rank, max(floors))
    if caps:
        rank = min(rank, min(caps))
    return TIERS[rank]


def _fitting(config: Config, tier: Tier, needed_tokens: int) -> Tier:
    """Return ``tier``, or the first tier above it whose window holds ``needed_tokens``."""
    for candidate in TIERS[TIERS.index(tier):]:
        if config.tiers[candidate].context_window >= needed_tokens:
            return candidate
    return max(TIERS, key=lambda t: config.tiers[t].context_window)
