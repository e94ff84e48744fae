"""Score the router against a labelled routing set: cross-validated, and with the shipped model.

Usage::

    python bench/eval_routing.py [PATH] [--config ROUTER_YAML] [--json] [--misses]

PATH defaults to ``shared/routing-eval/dev.jsonl`` beside the repository. Every row's request goes
through the real stages: ``parse_messages`` -> ``TokenCounter.estimate`` -> ``classify`` (its
``measure`` and ``judge``) -> ``decide`` with the config's compiled rules (the embedded default
unless ``--config``). The row's ``id``, ``tier`` and ``why`` are read only to score the result.

Two sets of figures:

- **cross-validated** (the honest one): 5 folds stratified by tier; for each, the complexity
  model is refitted on the other four folds exactly as ``scripts/fit-scorer`` fits the shipped
  one (thresholds chosen by cross-validation *within* those four), and the held-out fold is
  routed with it. No request is scored by a model that saw it or its label.
- **shipped model**: the weights in ``router/routing/scorer.json``, which were fitted on this
  very set when PATH is the development set: agreement there is not a measure of generalisation.

The conversation step of ``decide`` (a request whose history carries thinking blocks stays on
the model that signed them) is not what a set of single requests can score: the proxy never
served their earlier turns. Those rows are routed by the rules, as the first turn of a
conversation would be, and counted separately.

Metrics follow the set's README: agreement, confusion matrix, under-/over-routing, severe
under-routing (haiku for an opus label), and cost relative to always-Opus, request-weighted and
token-weighted (tokens = characters of system, tools and messages / 4), beside the same costs
when routing exactly by the labels.

``--simulate CANDIDATE.yaml`` prints instead what ``router simulate`` prints for the set: each
row becomes a ledger record of its request routed by ``--config`` (the shipped model's scores,
as a first turn), used as many input tokens as the router estimates on the model chosen, and no
output (the set has no answers), priced by the config; then the candidate replays the records
with the same engine and repricing (``router.accounting.simulate``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import fit_scorer as fit  # noqa: E402
from router.accounting.cost import PriceTable, Tokens  # noqa: E402
from router.accounting.entry import Entry  # noqa: E402
from router.accounting.simulate import render, simulate  # noqa: E402
from router.config_file import default_config_text  # noqa: E402
from router.routing.classify import judge  # noqa: E402
from router.routing.decide import decide  # noqa: E402
from router.routing.rules import Policy, load_policy, parse_policy  # noqa: E402
from router.routing.scorer import Scorer, default_scorer  # noqa: E402

TIERS = fit.TIERS


def route_rows(rows: Sequence[fit.Row], scorer: Scorer, policy: Policy) -> list[tuple[str, float]]:
    """The tier (or ``other``) the real rules choose for each row, with its score."""
    routed = []
    for row in rows:
        features = judge(dict(row.values), scorer, policy.config.complexity)
        # A set of single requests: route as the conversation's first turn (module docstring).
        decision = decide(msgspec.structs.replace(features, history_thinking=False), policy)
        routed.append((decision.tier or "other", features.complexity_score))
    return routed


def cross_validated(rows: Sequence[fit.Row], policy: Policy, salt: str = ""
                    ) -> list[tuple[str, float]]:
    """Each row routed by the model fitted (weights and thresholds) without its fold (folds
    assigned by hashes of the ids salted by ``salt``)."""
    x = fit.design(rows)
    y = np.array([r.label for r in rows])
    fold_model = fit.nested(rows, x, y, salt)
    routed: list[tuple[str, float]] = [("", 0.0)] * len(rows)
    for k in range(fit.FOLDS):
        test, model = fold_model(k)
        held = [i for i, t in enumerate(test) if t]
        for i, result in zip(held, route_rows([rows[i] for i in held], fit.as_scorer(model),
                                              policy), strict=True):
            routed[i] = result
    return routed


def report(rows: Sequence[fit.Row], routed: Sequence[tuple[str, float]]) -> dict[str, Any]:
    """The README's metrics for a routing, with the confusion matrix and the misses."""
    chosen = [TIERS.index(t) if t in TIERS else 2 for t, _ in routed]  # other: priced as opus
    labels = [r.label for r in rows]
    figures = fit.metrics(chosen, labels, [fit.readme_tokens(r.request) for r in rows])
    matrix = {t: {g: 0 for g in (*TIERS, "other")} for t in TIERS}
    for row, (tier, _) in zip(rows, routed, strict=True):
        matrix[TIERS[row.label]][tier] += 1
    figures["confusion"] = matrix
    figures["held_by_conversation"] = sum(1 for r in rows if r.values["history_thinking"])
    figures["misses"] = [
        {"id": r.id, "label": TIERS[r.label], "chosen": tier, "score": score}
        for r, (tier, score) in zip(rows, routed, strict=True) if tier != TIERS[r.label]
    ]
    return figures


def print_report(title: str, figures: Mapping[str, Any], *, misses: bool) -> None:
    """Print one set of figures as a person reads them."""
    label_r, label_t = figures["label_cost_requests"], figures["label_cost_tokens"]
    print(f"\n{title} ({figures['rows']} requests)")
    print(f"  agreement            {figures['agreement']:.1%}")
    print(f"  under-routing        {figures['under']:.1%}")
    print(f"  severe under (h<-o)  {figures['severe_under']:.1%}")
    print(f"  over-routing         {figures['over']:.1%}")
    print(f"  relative cost        {figures['cost_requests']:.3f} request-weighted "
          f"({figures['cost_requests'] / label_r:.3f}x labels), {figures['cost_tokens']:.3f} "
          f"token-weighted ({figures['cost_tokens'] / label_t:.3f}x labels)")
    print(f"  routing by labels    {label_r:.3f} request-weighted, {label_t:.3f} token-weighted")
    print("  confusion (rows: label, columns: chosen)")
    print("  " + f"{'':>8}" + "".join(f"{g:>8}" for g in (*TIERS, "other")))
    for label in TIERS:
        cells = figures["confusion"][label]
        print("  " + f"{label:>8}" + "".join(f"{cells[g]:>8}" for g in (*TIERS, "other")))
    if misses:
        for miss in figures["misses"]:
            print(f"    {miss['label']:>6} -> {miss['chosen']:<6} {miss['score']:6.1f}  "
                  f"{miss['id']}")


def as_ledger(rows: Sequence[fit.Row], policy: Policy) -> list[Entry]:
    """Each row as the ledger record of its request routed by ``policy`` (module docstring)."""
    prices = PriceTable(policy.config.pricing)
    scorer = default_scorer()
    thresholds = scorer.thresholds(policy.config.complexity)
    now = time.time()
    entries = []
    for row in rows:
        judged = judge(dict(row.values), scorer, policy.config.complexity)
        features = msgspec.structs.replace(judged, history_thinking=False)
        decision = decide(features, policy)
        usage = Tokens(input=features.input_tokens)
        cost = prices.cost_of(decision.model, usage)
        entries.append(Entry(
            ts=now, request_id=row.id, path="/v1/messages", status=200,
            requested_model=features.requested_model, rule=decision.rule, tier=decision.tier,
            model=decision.model, action=decision.action, features=features,
            thresholds=thresholds, answered_by=decision.model, usage=usage,
            cost_usd=str(cost) if cost is not None else None))
    return entries


def main(argv: list[str] | None = None) -> int:
    """Run the evaluation; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=None, help="labelled JSONL")
    parser.add_argument("--config", default=None, help="router.yaml (default: embedded)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--misses", action="store_true", help="list misrouted requests")
    parser.add_argument("--splits", action="store_true",
                        help="also average the cross-validated figures over five fold "
                             "assignments")
    parser.add_argument("--simulate", metavar="CANDIDATE", default=None,
                        help="print router simulate's report of CANDIDATE against --config")
    args = parser.parse_args(argv)
    path = Path(args.path) if args.path else fit.default_set()
    text = Path(args.config).read_text("utf-8") if args.config else default_config_text()
    policy = parse_policy(text, args.config or "<embedded default>")
    rows = fit.load_rows(path)
    if args.simulate:
        candidate = load_policy(args.simulate)
        simulated = simulate(as_ledger(rows, policy), candidate)
        if args.json:
            print(json.dumps(simulated.as_dict(), indent=2))
        else:
            print(render(simulated, f"{path} routed by {policy.loaded.source}"))
        return 0
    results: dict[str, Callable[[], list[tuple[str, float]]]] = {
        "cross-validated (5 folds, refitted without the held-out fold)":
            lambda: cross_validated(rows, policy),
        "shipped model (fitted on the development set: not a measure of generalisation)":
            lambda: route_rows(rows, default_scorer(), policy),
    }
    if args.splits:
        results |= {
            f"cross-validated, fold assignment salted {salt!r}":
                lambda salt=salt: cross_validated(rows, policy, salt)  # type: ignore[misc]
            for salt in fit.SPLITS[1:]
        }
    figures = {title: report(rows, run()) for title, run in results.items()}
    if args.json:
        print(json.dumps({"path": str(path), "policy": policy.loaded.source, **figures},
                         indent=2))
        return 0
    print(f"set: {path}\npolicy: rules of {policy.loaded.source}, through "
          "router.routing.decide.decide")
    held = next(iter(figures.values()))["held_by_conversation"]
    print(f"({held} rows carry thinking blocks: routed by the rules as a first turn would be)")
    for title, numbers in figures.items():
        print_report(title, numbers, misses=args.misses)
    if args.splits:
        print_splits([f for t, f in figures.items() if t.startswith("cross-validated")])
    return 0


def print_splits(splits: Sequence[Mapping[str, Any]]) -> None:
    """The cross-validated figures averaged over fold assignments (one line each, then mean)."""
    print(f"\ncross-validated over {len(splits)} fold assignments")
    keys = ("agreement", "under", "severe_under", "over")
    for n, f in enumerate(splits):
        ratio = f["cost_requests"] / f["label_cost_requests"]
        print(f"  {n}: " + ", ".join(f"{k} {f[k]:.1%}" for k in keys) + f", cost {ratio:.3f}x")
    mean = {k: sum(f[k] for f in splits) / len(splits) for k in keys}
    ratio = sum(f["cost_requests"] / f["label_cost_requests"] for f in splits) / len(splits)
    print("  mean: " + ", ".join(f"{k} {mean[k]:.1%}" for k in keys) + f", cost {ratio:.3f}x")


if __name__ == "__main__":
    raise SystemExit(main())
