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

Steps 1-3 read no conversation: :mod:`router.routing.ruling` decides them, memoised per policy.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from router.config import TIERS, Tier
from router.routing.capabilities import Needs, dropped_for
from router.routing.conversations import Conversation, payback, turn_cost
from router.routing.features import Features
from router.routing.rules import ALWAYS, Policy, Rule
from router.routing.ruling import (
    RANKS,
    Bounds,
    Decision,
    Trace,
    can_serve,
    capable_tier,
    fallbacks_of,
    ruling,
)

__all__ = ["Available", "Decision", "Trace", "Watched", "budget_bound", "decide"]

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
    ruled = ruling(features, policy, needs, explain=explain, bound=bound)
    if ruled.kind == "passthrough":
        return ruled.decision
    if ruled.kind == "pin":
        return _continued(ruled.decision, conversation)
    decision = ruled.decision
    if conversation is not None:
        decision = _with_conversation(decision, features, policy, ruled.winner, ruled.bounds,
                                      needs, conversation, available)
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


def _with_conversation(ruled: Decision, features: Features, policy: Policy,
                       winner: Rule | None, bounds: Bounds, needs: Needs | None,
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
    usable = current is not None and available(current) and can_serve(policy, current, needs)
    here = policy.tier_of(current) if current is not None else None
    # The current model's own fallbacks, for when it stays against the rules.
    own = (bounds, features, needs)

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
            and RANKS[ruled.tier] < RANKS[floor]):
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
    if here is None or target.tier is None or bounds.of(here) != here:
        return _continued(target, conversation, action="turn")
    up, down = RANKS[target.tier], RANKS[here]
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


def _cheapest_warm(policy: Policy, target: Decision, bounds: Bounds, features: Features,
                   needs: Needs | None, conversation: Conversation, available: Available
                   ) -> Decision:
    """Among the tiers at or above ``target``'s that may serve the turn, the one whose next
    turn costs least: a higher model whose cache is warm can beat a cold one the rules name."""
    assert target.tier is not None
    best, best_cost = target, None
    for tier in TIERS[RANKS[target.tier]:]:
        model = policy.config.tier_model(tier)
        price = policy.price_of(model)
        if (price is None or bounds.of(tier) != tier or not available(model)
                or not can_serve(policy, model, needs)):
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
        floor = min(settings.tool_loop_floor, requested, key=RANKS.__getitem__)
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
    return msgspec.structs.replace(conversation, owners=owners)


def _ruled_to(policy: Policy, tier: Tier, ruled: Decision, bounds: Bounds,
              features: Features, needs: Needs | None) -> Decision:
    capable, _ = capable_tier(policy, tier, needs)
    model = policy.config.tier_model(capable)
    return _replace(ruled, model=model, tier=capable,
                    fallbacks=fallbacks_of(policy, capable, model, bounds, features, needs))


def _staying(ruled: Decision, policy: Policy, model: str, action: str, why: str,
             conversation: Conversation, own: tuple[Bounds, Features, Needs | None]
             ) -> Decision:
    """The conversation keeps ``model`` (whose own fallbacks ``own`` gives: the bounds, the
    features and the needs): the rules' view stays in the reason, for ``explain``."""
    same = model == ruled.model
    reason = why if same else f"{why} (the rules alone say {ruled.model}: {ruled.reason})"
    tier = policy.tier_of(model)
    # A model bound by thinking signatures cannot fall back: another model would refuse them.
    if conversation.history.signatures:
        fallbacks: tuple[str, ...] = ()
    elif same:
        fallbacks = ruled.fallbacks
    else:
        fallbacks = fallbacks_of(policy, tier, model, *own) if tier is not None else ()
    # When the rules agree, they decided; the conversation only explains a difference.
    rule = ruled.rule if same else "conversation"
    return Decision(model, tier, rule, reason, ruled.trace,
                    fallbacks, action=action, strip=conversation.foreign(model))


def _continued(decision: Decision, conversation: Conversation | None, *, action: str = "turn",
               note: str = "") -> Decision:
    """``decision`` for a conversation: strip the thinking other models signed."""
    if conversation is None:
        return decision
    strip = conversation.foreign(decision.model)
    reason = f"{decision.reason}; {note}" if note else decision.reason
    signed = bool(conversation.history.signatures) and not strip
    # Built whole rather than by dataclasses.replace: once per request, at a third of the cost.
    return Decision(decision.model, decision.tier, decision.rule, reason, decision.trace,
                    () if signed else decision.fallbacks, action, strip, decision.drop)


def _replace(decision: Decision, **changes: object) -> Decision:
    return msgspec.structs.replace(decision, **changes)
