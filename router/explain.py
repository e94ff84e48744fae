"""``router explain`` and ``POST /v1/router/explain``: stages 1-3 with every rule traced, and the
report a person or a script reads. Nothing goes upstream."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec

from router.conversation_state import load_conversation
from router.parse import parse_messages
from router.pipeline import Routed, RouterState, estimate_tokens, route
from router.routing.conversations import Conversation
from router.routing.features import Features
from router.routing.rules import Policy
from router.routing.scorer import BOUNDARIES, default_scorer, probability


async def explain(body: bytes, headers: dict[str, str], state: RouterState) -> dict[str, Any]:
    """Stages 1-3 with every rule traced, for ``POST /v1/router/explain``: nothing goes upstream.

    Raises:
        InvalidRequest: the body is not a valid Messages request.
    """
    parsed = parse_messages(body, headers)
    estimate = await estimate_tokens(state.counter, parsed, state.background)
    conversation = await load_conversation(state.store, parsed)
    routed = route(parsed, estimate, state.policy, state.learner, conversation,
                   available=state.available, explain=True)
    return explanation(routed, state.policy)


def explanation(routed: Routed, policy: Policy) -> dict[str, Any]:
    """Return the report ``explain`` shows: decision, rules tried, features, token estimate."""
    decision = routed.decision
    return {
        "decision": {
            "model": decision.model,
            "tier": decision.tier or "other",
            "rule": decision.rule,
            "reason": decision.reason,
            "requested_model": routed.features.requested_model,
            "conversation": decision.action,
            "fallbacks": list(decision.fallbacks),
            "strip_thinking_blocks": len(decision.strip),
            "dropped": list(decision.drop),
        },
        "conversation": _conversation_report(routed.conversation),
        "rules": [
            {"rule": t.rule, "matched": t.matched, "when": t.condition, "effect": t.effect}
            for t in decision.trace
        ],
        "features": msgspec.structs.asdict(routed.features),
        "complexity": complexity_explanation(routed.features, policy),
        "estimate": dataclasses.asdict(routed.estimate),
        "config": {"source": policy.loaded.source, "sha256": policy.loaded.sha256},
    }


def _conversation_report(conversation: Conversation | None) -> dict[str, Any] | None:
    """What ``explain`` shows of the conversation: never content, only its routing state."""
    if conversation is None:
        return None
    state = conversation.state
    return {
        "id": conversation.id,
        "in_tool_loop": conversation.history.in_tool_loop,
        "current_model": conversation.current_model(),
        "signatures": len(conversation.history.signatures),
        "signatures_known": len(conversation.owners),
        "turns_seen": state.turns if state else 0,
        "caches": {
            model: {"tokens": c.tokens, "ttl": c.ttl,
                    "expires_in_seconds": round(c.expires_at - conversation.now, 1)}
            for model, c in (state.caches.items() if state else ())
        },
    }


def complexity_explanation(features: Features, policy: Policy) -> dict[str, Any]:
    """Return how ``complexity_score`` was reached: the model's base logits (an average
    request's), what each feature added to each boundary's logit (``beyond_haiku``, ``opus``),
    the two probabilities they make, and the thresholds that made the score a level."""
    scorer = default_scorer()
    simple_below, complex_from = scorer.thresholds(policy.config.complexity)
    found = scorer.contributions(features)
    logits = [base + sum(c.beyond_haiku if k == 0 else c.opus for c in found)
              for k, base in enumerate(scorer.intercepts)]
    return {
        "score": features.complexity_score,
        "level": features.complexity,
        "simple_below": simple_below,
        "complex_from": complex_from,
        "boundaries": list(BOUNDARIES),
        "probabilities": [round(probability(v), 3) for v in logits],
        "logits": [round(v, 3) for v in logits],
        "base": [round(v, 3) for v in scorer.intercepts],
        "contributions": [
            {"term": c.term, "value": c.value,
             "logits": [round(c.beyond_haiku, 3), round(c.opus, 3)]}
            for c in found
        ],
    }
