"""Score the router's default policy against a labelled routing set.

Usage::

    python bench/eval_routing.py [PATH] [--json] [--misses] [--config ROUTER_YAML]

PATH defaults to ``../shared/routing-eval/dev.jsonl`` (relative to the repository root). Each
row's ``request`` goes through the real pipeline stages: ``parse_messages`` ->
``TokenCounter.estimate`` -> ``classify`` -> ``decide``. The row's ``id``, ``tier`` and ``why`` are
read only to score the result, never shown to the classifier.

When ``router.routing.decide`` has no ``decide(features, config)`` yet, the rules in
``bench/proposed_rules.yaml`` are evaluated by a small local interpreter of the same syntax.
Metrics follow the set's README: agreement, confusion matrix, under-/over-routing, severe
under-routing (haiku for an opus label), and cost relative to always-Opus, request-weighted and
token-weighted (tokens = characters of system, tools and messages / 4, as the README defines).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from router.config import Config, default_config_text, parse_config  # noqa: E402
from router.parse import parse_messages  # noqa: E402
from router.routing import decide as decide_module  # noqa: E402
from router.routing.classify import classify  # noqa: E402
from router.routing.features import Features  # noqa: E402
from router.routing.tokens import TokenCounter  # noqa: E402

DEFAULT_SET = REPO.parent / "shared" / "routing-eval" / "dev.jsonl"
PROPOSED_RULES = REPO / "bench" / "proposed_rules.yaml"
TIERS = ("haiku", "sonnet", "opus")
PRICE = {"haiku": 1, "sonnet": 3, "opus": 5}
RANK = {"haiku": 0, "sonnet": 1, "opus": 2}

Router = Callable[[Features], str]


def readme_tokens(request: Mapping[str, Any]) -> int:
    """The README's token weight: characters of system, tools and messages divided by 4."""
    chars = sum(
        len(json.dumps(request.get(k), ensure_ascii=False))
        for k in ("system", "tools", "messages")
        if request.get(k) is not None
    )
    return max(1, chars // 4)


# -- local stand-in for the rules engine ---------------------------------------------------------


def _test(value: Any, test: Any) -> bool:
    """Apply one feature test of the rule syntax to a feature value."""
    if isinstance(value, tuple):
        return any(_test(item, test) for item in value)
    if isinstance(test, list):
        return any(_test(value, t) for t in test)
    if isinstance(test, dict):
        ops: dict[str, Callable[[Any, Any], bool]] = {
            "eq": lambda v, a: bool(v == a),
            "ne": lambda v, a: bool(v != a),
            "lt": lambda v, a: bool(v < a),
            "lte": lambda v, a: bool(v <= a),
            "gt": lambda v, a: bool(v > a),
            "gte": lambda v, a: bool(v >= a),
            "in": lambda v, a: v in a,
            "not_in": lambda v, a: v not in a,
            "glob": lambda v, a: fnmatchcase(str(v), str(a)),
            "contains": lambda v, a: str(a) in str(v),
        }
        return all(ops[op](value, arg) for op, arg in test.items())
    if isinstance(test, str) and any(c in test for c in "*?["):
        return fnmatchcase(str(value), test)
    return bool(value == test)


def _holds(when: Any, features: Features) -> bool:
    if when is None:
        return True
    result = True
    for key, test in when.items():
        if key == "all":
            result &= all(_holds(w, features) for w in test)
        elif key == "any":
            result &= any(_holds(w, features) for w in test)
        elif key == "not":
            result &= not _holds(test, features)
        else:
            result &= _test(getattr(features, key), test)
    return result


def local_router(text: str) -> Router:
    """Return a router that applies ``rules``/``default`` of config text (tier rules only)."""
    policy = yaml.safe_load(text)
    rules = policy.get("rules", [])
    default = policy.get("default", "sonnet")

    def route(features: Features) -> str:
        for rule in rules:
            if _holds(rule.get("when"), features):
                if rule.get("tier"):
                    return str(rule["tier"])
                if rule.get("pin"):
                    return features.requested_tier
        return str(default)

    return route


def policy_text(config_path: str | None, rules_path: Path | None) -> tuple[str, str]:
    """Return config text to route by and a label saying where its rules came from.

    The config file (or the embedded default) is used as it is when it has rules and no
    ``rules_path`` is given; otherwise the ``rules:``/``default:`` of ``rules_path`` (the proposed
    policy by default) replace its own.
    """
    base = Path(config_path).read_text("utf-8") if config_path else default_config_text()
    data = yaml.safe_load(base) or {}
    if data.get("rules") and rules_path is None:
        return base, f"rules of {config_path or 'the embedded default'}"
    rules_file = rules_path or PROPOSED_RULES
    policy = yaml.safe_load(rules_file.read_text("utf-8"))
    data["rules"] = policy.get("rules", [])
    data["default"] = policy.get("default", "sonnet")
    return yaml.safe_dump(data, sort_keys=False), f"rules of {rules_file}"


def engine_router(text: str, source: str) -> Router | None:
    """Return a router backed by the real rules engine, or None while it does not exist yet."""
    decide = getattr(decide_module, "decide", None)
    try:
        from router.routing.rules import parse_policy
    except ImportError:
        return None
    if decide is None:
        return None
    policy = parse_policy(text, source)

    def route(features: Features) -> str:
        tier = decide(features, policy).tier
        return str(tier) if tier else "other"

    return route


# -- scoring -------------------------------------------------------------------------------------


def requested_tier(config: Config, model: str) -> str:
    """Tier of the requested model, via the config's member globs."""
    tier = config.tier_of_model(model)
    return tier if tier else "other"


def evaluate(path: Path, config: Config, route: Router, counter: TokenCounter) -> dict[str, Any]:
    """Route every row of ``path`` and compute the README's metrics."""
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    results = []
    for row in rows:
        request = row["request"]
        parsed = parse_messages(json.dumps(request).encode(), {})
        estimate = counter.estimate(parsed.request)
        tier = requested_tier(config, parsed.request.model)
        factor = getattr(config.tiers[tier], "token_factor", 1.0) if tier in TIERS else 1.0
        features = classify(parsed, estimate, token_factor=factor, requested_tier=tier)
        results.append((row, features, route(features), readme_tokens(request)))

    n = len(results)
    matrix = {t: {g: 0 for g in (*TIERS, "other")} for t in TIERS}
    for row, _, got, _ in results:
        matrix[row["tier"]][got] += 1

    def cost(weight: Callable[[int], int], chosen: Callable[[str, str], str]) -> float:
        spent = sum(PRICE.get(chosen(r["tier"], g), 5) * weight(k) for r, _, g, k in results)
        return spent / sum(5 * weight(k) for _, _, _, k in results)

    def rank(tier: str) -> int:
        return RANK.get(tier, 2)

    return {
        "path": str(path),
        "rows": n,
        "agreement": sum(r["tier"] == g for r, _, g, _ in results) / n,
        "under": sum(rank(g) < rank(r["tier"]) for r, _, g, _ in results) / n,
        "severe_under": sum(r["tier"] == "opus" and g == "haiku" for r, _, g, _ in results) / n,
        "over": sum(rank(g) > rank(r["tier"]) for r, _, g, _ in results) / n,
        "relative_cost_requests": cost(lambda k: 1, lambda t, g: g),
        "relative_cost_tokens": cost(lambda k: k, lambda t, g: g),
        "label_cost_requests": cost(lambda k: 1, lambda t, g: t),
        "label_cost_tokens": cost(lambda k: k, lambda t, g: t),
        "confusion": matrix,
        "misses": [
            {
                "id": r["id"],
                "label": r["tier"],
                "chosen": g,
                "score": f.complexity_score,
                "features": {k: v for k, v in asdict(f).items() if k in _SHOWN},
            }
            for r, f, g, _ in results
            if g != r["tier"]
        ],
    }


_SHOWN = (
    "input_tokens",
    "max_tokens",
    "hard_markers",
    "reasoning_markers",
    "simple_markers",
    "proof",
    "math",
    "brevity",
    "steps",
    "code_lines",
    "prose_words",
    "task_chars",
    "thinking",
    "effort",
    "tool_loop_depth",
    "structured_output",
)


def print_report(report: Mapping[str, Any], *, misses: bool) -> None:
    """Print the metrics as a person reads them."""
    print(f"set: {report['path']} ({report['rows']} requests)")
    print(f"agreement            {report['agreement']:.1%}")
    print(f"under-routing        {report['under']:.1%}")
    print(f"severe under (h<-o)  {report['severe_under']:.1%}")
    print(f"over-routing         {report['over']:.1%}")
    print(
        f"relative cost        {report['relative_cost_requests']:.3f} request-weighted, "
        f"{report['relative_cost_tokens']:.3f} token-weighted"
    )
    print(
        f"label reference      {report['label_cost_requests']:.3f} request-weighted, "
        f"{report['label_cost_tokens']:.3f} token-weighted"
    )
    print("\nconfusion (rows: label, columns: chosen)")
    print(f"{'':>8}" + "".join(f"{g:>8}" for g in (*TIERS, "other")))
    for label in TIERS:
        cells = report["confusion"][label]
        print(f"{label:>8}" + "".join(f"{cells[g]:>8}" for g in (*TIERS, "other")))
    if misses:
        print("\nmisses")
        for miss in report["misses"]:
            print(f"  {miss['label']:>6} -> {miss['chosen']:<6} {miss['score']:5.1f}  {miss['id']}")
            print(f"         {miss['features']}")


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_SET), help="labelled JSONL")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--misses", action="store_true", help="list misrouted requests")
    parser.add_argument("--config", default=None, help="router.yaml (default: embedded)")
    parser.add_argument(
        "--rules", default=None, help="YAML whose rules/default replace the config's own"
    )
    args = parser.parse_args(argv)

    text, rules_label = policy_text(args.config, Path(args.rules) if args.rules else None)
    loaded = parse_config(text, args.config or "<embedded default>")
    route = engine_router(text, loaded.source)
    engine = "router.routing.decide.decide" if route else "local interpreter (no rules engine yet)"
    if route is None:
        route = local_router(text)
    report = evaluate(Path(args.path), loaded.config, route, TokenCounter.load())
    report = {"policy": f"{engine}, {rules_label}", **report}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"policy: {report['policy']}")
        print_report(report, misses=args.misses)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
