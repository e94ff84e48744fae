"""The ``x-router-*`` headers every routed answer carries: where it went, why, and what the
caller's budget says."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from router.routing.decide import Decision
from router.routing.rules import Policy


def routing_headers(decision: Decision | None, policy: Policy,
                    budget: Sequence[tuple[str, str]] = ()
                    ) -> Callable[[str | None], list[tuple[str, str]]]:
    """Return a function giving the ``x-router-*`` headers every routed answer carries, for an
    answer from a given model (the decision's, or a fallback's), and the budget's."""
    # Team and key names come from router.yaml: any text, made header-safe.
    budget = [(name, header_text(value)) for name, value in budget]
    if decision is None:
        return lambda model: list(budget)

    conversation = [("x-router-conversation", decision.action),
                    ("x-router-reason", header_text(decision.reason)), *budget]

    def headers(model: str | None) -> list[tuple[str, str]]:
        tier = decision.tier if model is None or model == decision.model else policy.tier_of(model)
        return [("x-router-model", model or decision.model), ("x-router-tier", tier or "other"),
                ("x-router-rule", decision.rule), *conversation]

    return headers


def header_text(text: str, limit: int = 400) -> str:
    """``text`` as a header value: printable ASCII on one line, bounded."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."
