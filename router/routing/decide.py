"""Stage 3 of the pipeline: features + policy (+ the conversation) -> :class:`Decision`.

Pure: no I/O, no clock. The order of precedence, highest first:

1. Unknown models pass through: a requested model that belongs to no tier goes upstream
   untouched, unless a rule that tests ``requested_model`` or ``requested_tier`` routes it.
2. ``pin``: the requested model, untouched by guards.
3. The first routing rule that matches (else ``default``), bounded by the ``cap``/``floor`` of
   that rule and of every matching guard, then moved to a tier whose window and capabilities
   (``models:``) can serve the request: a routing choice must never become the client's error.
4. The conversation (:mod:`router.routing.conversations`): a tool loop keeps its model, thinking
   goes back to the model that signed it, and at a new user turn the conversation moves up when
   the rules ask for more and down only when it pays (``conversations.affinity``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from router.config import TIERS, Config, Tier
from router.routing.capabilities import Needs, dropped_for, unmet_limit
from router.routing.conversations import Conversation, payback, turn_cost
from router.routing.features import Features
from router.routing.rules import ALWAYS, Policy, Rule


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
    """The name of the rule that decided (or ``default``, ``passthrough``, ``conversation``)."""
    reason: str
    """One line a person can read."""
    trace: tuple[Trace, ...] = field(default=(), compare=False)
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


Available = Callable[[str], bool]
"""Whether a model can take requests now (its circuit is not open)."""


class Watched:
    """An :data:`Available` that remembers the models it found unavailable (for the ledger)."""

    def __init__(self, available: Available) -> None:
        self.available = available
        self.down: list[str] = []

    def __call__(self, model: str) -> bool:
        up = self.available(model)
        if not up:
            self.down.append(model)
        return up


def budget_bound(tier: Tier, why: str) -> Rule:
    """The guard a budget near its limit adds: no tier above ``tier``."""
    return Rule("budget", why, ALWAYS, None, None, False, tier, None, False, -1, None)


def _always(model: str) -> bool:
    return True


def decide(
    features: Features,
    policy: Policy,
    *,
    needs: Needs | None = None,
    conversation: Conversation | None = None,
    available: Available = _always,
    explain: bool = False,
    bound: Rule | None = None,
) -> Decision:
    """Choose the model for a request.

    Args:
        features: the request's features.
        policy: the compiled rules, tiers and model capabilities.
        needs: what the request asks of a model (limits); None skips the capability check.
        conversation: the conversation the request continues, from the store; None decides the
            request alone.
        available: whether a model can take requests now.
        explain: record every rule tried in ``Decision.trace``.
        bound: one more guard that matches, after the config's (a budget's cap).
    """
    config = policy.config
    requested = config.resolve_model(features.requested_model)
    winner, bounds, trace = _matching(features, policy, explain)
    if bound is not None:
        bounds.append(bound)
    traced = tuple(trace)

    if policy.tier_of(requested) is None and not (winner and winner.names_requested_model):
        return Decision(requested, None, "passthrough",
                        "no tier or rule names this model: sent as asked", traced,
                        action="passthrough")

    if winner is not None and winner.pin:
        decision = Decision(requested, policy.tier_of(requested), winner.name,
                            "pinned to the requested model", traced)
        return _continued(decision, conversation)

    decision = _ruled(features, policy, winner, bounds, requested, needs, traced)
    if conversation is not None:
        decision = _with_conversation(decision, features, policy, winner, bounds, needs,
                                      conversation, available)
    return _adjusted(decision, policy, needs)


def _adjusted(decision: Decision, policy: Policy, needs: Needs | None) -> Decision:
    """``decision`` with what its model cannot take dropped from the request, and said why."""
    if needs is None:
        return decision
    dropped = dropped_for(decision.model, policy.caps_of(decision.model), needs)
    if not dropped:
        return decision
    drop = tuple(dict.fromkeys((*decision.drop, *dropped)))
    what = " and ".join("adaptive thinking" if d == "thinking" else f"effort {needs.effort}"
                        for d in dropped)
    return _replace(decision, drop=drop,
                    reason=f"{decision.reason}; {what} dropped: {decision.model} does not "
                           "take it")


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
            effect = _effect(rule) if matched else "no match"
            trace.append(Trace(rule.name, matched, rule.condition.describe(), effect))
    return winner, bounds, trace


def _ruled(features: Features, policy: Policy, winner: Rule | None, bounds: list[Rule],
           requested: str, needs: Needs | None, trace: tuple[Trace, ...]) -> Decision:
    """The rules' decision for the request alone: target, bounds, window and capabilities."""
    config = policy.config
    if winner is None:
        name, reason = "default", "no rule matched"
        target = requested if config.default == "requested" else config.default
    else:
        name, reason = winner.name, winner.description or _effect(winner)
        target = winner.tier or winner.model or requested
    model = config.resolve_model(target)
    tier = policy.tier_of(model)
    if tier is None:
        return Decision(model, None, name, reason, trace)
    bounded = _bounded(tier, bounds)
    fitting = _fitting(config, bounded, features.input_tokens + features.max_tokens)
    if fitting != tier:
        reason += f"; {'bounded' if fitting == bounded else 'context'} to {fitting}"
        model, tier = config.tier_model(fitting), fitting
    if not _can_serve(policy, model, needs):
        capable, why = _capable(policy, tier, needs)
        reason += f"; {why}: moved to {capable}"
        model, tier = config.tier_model(capable), capable
    return Decision(model, tier, name, reason, trace,
                    _fallbacks(policy, tier, model, bounds, features, needs))


def _capable(policy: Policy, tier: Tier, needs: Needs | None) -> tuple[Tier, str]:
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


def _can_serve(policy: Policy, model: str, needs: Needs | None) -> bool:
    return needs is None or unmet_limit(model, policy.caps_of(model), needs,
                                        policy.model_betas) is None


def _fallbacks(policy: Policy, tier: Tier, model: str, bounds: list[Rule], features: Features,
               needs: Needs | None) -> tuple[str, ...]:
    config = policy.config
    needed = features.input_tokens + features.max_tokens
    return tuple(
        config.tier_model(t) for t in config.tiers[tier].fallbacks
        if _bounded(t, bounds) == t and config.tiers[t].context_window >= needed
        and config.tier_model(t) != model and _can_serve(policy, config.tier_model(t), needs)
    )


def _with_conversation(ruled: Decision, features: Features, policy: Policy,
                       winner: Rule | None, bounds: list[Rule], needs: Needs | None,
                       conversation: Conversation, available: Available) -> Decision:
    """Apply the conversation's continuity to the rules' decision."""
    config = policy.config
    settings = config.conversations
    history = conversation.history
    current = conversation.current_model()
    if current is None and conversation.unknown_signatures():
        # Thinking nobody here saw signed: the model the client asked for is the likeliest
        # signer (the conversation began elsewhere, or before this proxy kept state).
        current = config.resolve_model(features.requested_model)
    conversation = _assuming(conversation, current)
    usable = current is not None and available(current) and _can_serve(policy, current, needs)
    here = policy.tier_of(current) if current is not None else None
    own = (_fallbacks(policy, here, current, bounds, features, needs)
           if here is not None and current is not None else ())

    if history.in_tool_loop:
        if current is None:
            return _continued(ruled, conversation, action="new")
        if usable:
            return _staying(ruled, policy, current, "tool-loop",
                            "inside a tool loop the model never changes", conversation, own)
        # The loop's model is gone or cannot serve this turn: leave it, without its thinking.
        moved = _continued(ruled, conversation, action="tool-loop")
        why = "unavailable" if not available(current) else "cannot serve this turn"
        off = ("thinking",) if features.thinking == "enabled" and moved.strip else ()
        return _replace(moved, reason=f"{moved.reason}; the loop's model {current} is {why}",
                        drop=off)

    floor, why = _start_floor(features, conversation, policy)
    target = ruled
    if (floor is not None and ruled.tier is not None
            and TIERS.index(ruled.tier) < TIERS.index(floor)):
        lifted = _ruled_to(policy, floor, ruled, bounds, features, needs)
        target = _replace(lifted, reason=f"{ruled.reason}; {why}: starts at {floor} or above")

    if current is None:
        return _continued(target, conversation, action="new")
    if not usable:
        return _continued(target, conversation, action="turn")
    affinity = settings.affinity
    if affinity == "turn" or (winner is not None and winner.allow_model_switch):
        return _continued(target, conversation, action="turn")
    if affinity == "sticky":
        return _staying(target, policy, current, "sticky", "the conversation keeps its first "
                        "model", conversation, own)
    if here is None or target.tier is None or _bounded(here, bounds) != here:
        return _continued(target, conversation, action="turn")
    up, down = TIERS.index(target.tier), TIERS.index(here)
    if up > down:
        best = _cheapest_warm(policy, target, bounds, features, needs, conversation, available)
        note = f"moved up from {current}: the rules ask for {target.tier}"
        if best.model != target.model:
            note += f"; {best.model} rather than {target.model}: its cache is warm"
        return _continued(best, conversation, action="up", note=note)
    if up == down:
        return _staying(target, policy, current, "stay", "same tier as the conversation",
                        conversation, own)
    prices = (policy.price_of(current), policy.price_of(target.model))
    if prices[0] is None or prices[1] is None:
        # Without prices the move cannot be shown to cost more: the rules have it.
        return _continued(target, conversation, action="down",
                          note=f"moved down from {current}: no price to weigh the move")
    math = payback(conversation, current, target.model, features.input_tokens,
                   (prices[0], prices[1]), settings.payback_turns)
    if math is None:
        return _continued(target, conversation, action="down",
                          note=f"moved down from {current}: its cache is cold")
    if math.pays:
        return _continued(target, conversation, action="down",
                          note=math.describe(current, target.model))
    return _staying(target, policy, current, "stay", math.describe(current, target.model),
                    conversation, own)


def _cheapest_warm(policy: Policy, target: Decision, bounds: list[Rule], features: Features,
                   needs: Needs | None, conversation: Conversation, available: Available
                   ) -> Decision:
    """Among the tiers at or above ``target``'s that may serve the turn, the one whose next
    turn costs least: a higher model whose cache is warm can beat a cold one the rules name."""
    assert target.tier is not None
    best, best_cost = target, None
    for tier in TIERS[TIERS.index(target.tier):]:
        model = policy.config.tier_model(tier)
        price = policy.price_of(model)
        if (price is None or _bounded(tier, bounds) != tier or not available(model)
                or not _can_serve(policy, model, needs)):
            continue
        cost = turn_cost(conversation, model, price, features.input_tokens)
        if best_cost is None or cost < best_cost:
            candidate = target if model == target.model else _ruled_to(
                policy, tier, target, bounds, features, needs)
            best, best_cost = candidate, cost
    return best


def _start_floor(features: Features, conversation: Conversation, policy: Policy
                 ) -> tuple[Tier | None, str]:
    """The lowest tier for a turn whose model will be hard to leave, and why; None if none.

    Never above the requested tier: the floor protects what the client would have had going
    direct, it does not buy more."""
    settings = policy.config.conversations
    requested = policy.tier_of(policy.config.resolve_model(features.requested_model))
    if requested is None:
        return None, ""
    if (settings.tool_loop_floor and features.tools > 0
            and features.tool_choice not in ("tool", "none")):
        floor = min(settings.tool_loop_floor, requested, key=TIERS.index)
        return floor, "it may start a tool loop, which never changes model"
    if (settings.large_prefix_tokens and conversation.state is None and conversation.caching
            and features.input_tokens >= settings.large_prefix_tokens):
        return requested, "it opens a conversation over a large cached prefix"
    return None, ""


def _assuming(conversation: Conversation, signer: str | None) -> Conversation:
    """``conversation`` with the signatures nobody recorded attributed to ``signer``."""
    unknown = [h for h in conversation.history.signatures if h not in conversation.owners]
    if signer is None or not unknown:
        return conversation
    owners = {**conversation.owners, **dict.fromkeys(unknown, signer)}
    return dataclasses.replace(conversation, owners=owners)


def _ruled_to(policy: Policy, tier: Tier, ruled: Decision, bounds: list[Rule],
              features: Features, needs: Needs | None) -> Decision:
    capable, _ = _capable(policy, tier, needs)
    model = policy.config.tier_model(capable)
    return _replace(ruled, model=model, tier=capable,
                    fallbacks=_fallbacks(policy, capable, model, bounds, features, needs))


def _staying(ruled: Decision, policy: Policy, model: str, action: str, why: str,
             conversation: Conversation, own: tuple[str, ...]) -> Decision:
    """The conversation keeps ``model`` (whose own fallbacks are ``own``): the rules' view stays
    in the reason, for ``explain``."""
    same = model == ruled.model
    reason = why if same else f"{why} (the rules alone say {ruled.model}: {ruled.reason})"
    # A model bound by thinking signatures cannot fall back: another model would refuse them.
    signed = bool(conversation.history.signatures)
    fallbacks = () if signed else (ruled.fallbacks if same else own)
    # When the rules agree, they decided; the conversation only explains a difference.
    rule = ruled.rule if same else "conversation"
    return Decision(model, policy.tier_of(model), rule, reason, ruled.trace,
                    fallbacks, action=action, strip=conversation.foreign(model))


def _continued(decision: Decision, conversation: Conversation | None, *, action: str = "turn",
               note: str = "") -> Decision:
    """``decision`` for a conversation: strip the thinking other models signed."""
    if conversation is None:
        return decision
    strip = conversation.foreign(decision.model)
    reason = f"{decision.reason}; {note}" if note else decision.reason
    signed = bool(conversation.history.signatures) and not strip
    return _replace(decision, reason=reason, action=action, strip=strip,
                    fallbacks=() if signed else decision.fallbacks)


def _replace(decision: Decision, **changes: object) -> Decision:
    return dataclasses.replace(decision, **changes)  # type: ignore[arg-type]


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
