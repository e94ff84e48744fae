"""Checks of a rules file beyond a rule's own syntax: targets, and models without a price."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.config import TIERS, RuleConfig
from router.config_file import LoadedConfig

if TYPE_CHECKING:
    from router.routing.rules import Rule


def unpriced(loaded: LoadedConfig, rules: list[Rule]) -> list[str]:
    """Models the config routes to that have no price (only once a price table exists)."""
    pricing = loaded.config.pricing
    if pricing is None:
        return []
    priced = {m for name, p in pricing.models.items() for m in (name, *p.aliases)}
    problems = [
        f"tiers.{name}.model (line {loaded.line_of(f'$.tiers.{name}.model')}): "
        f"'{tier.model}' has no price in pricing.models"
        for name, tier in loaded.config.tiers.items() if tier.model not in priced
    ]
    problems += [
        f"{rule.label}: model '{rule.model}' has no price in pricing.models"
        for rule in rules if rule.model is not None and rule.model not in priced
    ]
    default = loaded.config.default
    if default.startswith("claude") and default not in priced:
        problems.append(f"default (line {loaded.line_of('$.default')}): '{default}' has no "
                        "price in pricing.models")
    return problems


def target_problems(spec: RuleConfig) -> list[str]:
    targets = [n for n, v in (("tier", spec.tier), ("model", spec.model), ("pin", spec.pin)) if v]
    problems = []
    if len(targets) > 1:
        problems.append(f"give one target, not {' and '.join(targets)}")
    if not targets and spec.cap is None and spec.floor is None:
        problems.append("needs a target (tier, model or pin) or a bound (cap, floor)")
    if spec.cap and spec.floor and TIERS.index(spec.cap) < TIERS.index(spec.floor):
        problems.append(f"cap {spec.cap} is below floor {spec.floor}")
    if spec.model is not None and not spec.model.strip():
        problems.append("model is empty")
    return problems
