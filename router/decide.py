"""Stage 3 of the pipeline: features + config -> :class:`Decision` (which model, and why)."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from router.config import TIERS, Config, Tier


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes."""

    model: str
    """The model id sent upstream."""
    tier: Tier | None
    """The tier of that model, or None when it belongs to none."""
    rule: str
    """The name of the rule that decided."""
    reason: str
    """One line a person can read."""


def tier_of_model(config: Config, model: str) -> Tier | None:
    """Return the tier a model id belongs to: a tier's own model, a member glob, or a tier name."""
    if model in config.tiers:
        return model  # a tier name used as a model alias
    for tier in TIERS:
        if config.tiers[tier].model == model:
            return tier
    for tier in TIERS:
        if any(fnmatchcase(model, glob) for glob in config.tiers[tier].members):
            return tier
    return None


def requested_decision(config: Config, requested: str) -> Decision:
    """Return the decision that keeps the requested model (a tier name maps to its model)."""
    if requested in config.tiers:
        tier: Tier = requested
        return Decision(config.tier_model(tier), tier, "alias", f"'{requested}' names a tier")
    return Decision(requested, tier_of_model(config, requested), "passthrough", "requested model")
