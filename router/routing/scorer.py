"""The complexity model: features in, ``complexity_score`` out, and what each feature added.

The model judges the two boundaries between tiers separately: one logistic regression for "harder
than Haiku work" (``beyond_haiku``), one for "Opus work" (``opus``), each a sum over the same
terms, ``logit = intercept + sum(weight * (x - center))`` with a weight per boundary. Each term's
``x`` is one feature, optionally capped (``min(x, cap)``), then optionally log-scaled
(``log(1 + x)``); a string feature enters as an indicator (``x = 1`` when it equals a value).
Centres are the terms' means on the fitted data, so the intercepts are an average request's
logits and each contribution says how far this request's feature moved them from there.

The two become one number, so that rules and the ``complexity`` thresholds test one score::

    complexity_score = 50 * (P(beyond_haiku) + P(opus))

the expected tier on a 0-100 scale (0 Haiku, 50 Sonnet, 100 Opus): an even chance of Sonnet
work scores about 25, an even chance of Opus work about 75. The weights come from
``scorer.json`` in this package, which ``scripts/fit-scorer`` fits on the labelled development
set; the thresholds that bucket the score into ``complexity`` levels are chosen by
cross-validation when fitting, and ``router.yaml``'s ``complexity:`` section can move them.

Inference is plain Python (no numpy) and costs a few microseconds: one pass over the terms.
``docs/classifier.md`` explains the model, its features and how to refit it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import msgspec

from router.config import ComplexityConfig
from router.routing.features import Features, feature_names

SCORER_FILE = "scorer.json"
"""The shipped weights, beside this module."""
_HUGE = 1e300
FORMAT = 2
"""The version of ``scorer.json`` this module reads (1 was one linear score in points)."""
BOUNDARIES = ("beyond_haiku", "opus")
"""The two questions the model answers, in the order of every pair of weights and logits."""


class TermSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One term of the model as the JSON file states it."""

    feature: str
    """A :class:`Features` field."""
    weights: tuple[float, float]
    """Logits per unit of the transformed value, for each of :data:`BOUNDARIES`."""
    equals: str | None = None
    """For a string feature: the term is 1 when the feature equals this (a tuple feature: when
    it contains it), else 0."""
    cap: float | None = None
    """For a number: values above this count as this."""
    log: bool = False
    """For a number: use ``log(1 + x)`` (after the cap; negative values count as 0)."""
    center: float = 0.0
    """The term's mean on the data it was fitted on: a contribution is ``weight * (x -
    center)``, logits above or below an average request (the intercepts are that request's)."""


class ThresholdSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The default boundaries of the ``complexity`` levels, on the score's 0-100 scale."""

    simple_below: float
    complex_from: float


class ScorerFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``scorer.json``: the fitted model and where it came from."""

    format: int
    model: str
    """What was fitted, in words."""
    fitted_on: dict[str, Any]
    """The data set (file name, sha256, rows) and the fit's settings, for reproducing it."""
    intercepts: tuple[float, float]
    """An average request's logits, for each of :data:`BOUNDARIES`."""
    terms: list[TermSpec]
    thresholds: ThresholdSpec
    cross_validation: dict[str, Any] = {}
    """Figures measured on held-out folds when the file was written (informational)."""
    checks: list[dict[str, Any]] = []
    """A few rows' feature values with the score the fit computed for them: the tests hold
    this plain-Python inference to them."""


@dataclass(frozen=True, slots=True)
class Term:
    """A compiled term: reads one feature and weighs it."""

    feature: str
    beyond_haiku: float
    opus: float
    equals: str | None
    cap: float | None
    log: bool
    center: float

    @property
    def label(self) -> str:
        """How ``explain`` names the term: ``thinking = adaptive``, ``log(1 + max_tokens)``."""
        if self.equals is not None:
            return f"{self.feature} = {self.equals}"
        name = self.feature if self.cap is None else f"min({self.feature}, {self.cap:g})"
        return f"log(1 + {name})" if self.log else name

    def value(self, raw: Any) -> float:
        """The term's ``x - center`` for a feature's value."""
        if self.equals is not None:
            x = 1.0 if (raw == self.equals or (type(raw) is tuple and self.equals in raw)) \
                else 0.0
        else:
            try:
                x = float(raw)
            except OverflowError:  # an integer past float range (a client's max_tokens)
                x = _HUGE if raw > 0 else -_HUGE
            if self.cap is not None and x > self.cap:
                x = self.cap
            if self.log:
                # Counts are never negative; a bad request's negative one counts as none.
                x = math.log1p(x) if x > 0 else 0.0
        return x - self.center


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one term added to a score, for ``explain``."""

    term: str
    value: Any
    """The feature's value."""
    beyond_haiku: float
    """Logits the term added to "harder than Haiku work"."""
    opus: float
    """Logits the term added to "Opus work"."""


@dataclass(frozen=True)
class Scorer:
    """A loaded complexity model."""

    intercepts: tuple[float, float]
    """An average request's logits, for each of :data:`BOUNDARIES`."""
    terms: tuple[Term, ...]
    simple_below: float
    """The fitted default threshold of ``simple``."""
    complex_from: float
    """The fitted default threshold of ``complex``."""
    source: ScorerFile

    def score(self, values: Mapping[str, Any]) -> float:
        """Return ``complexity_score`` for feature values by name (a dict or a mapping view)."""
        return score_of(*self.logits(values))

    def logits(self, values: Mapping[str, Any]) -> tuple[float, float]:
        """Return the two boundaries' logits (:data:`BOUNDARIES`) for feature values by name."""
        low, high = self.intercepts
        for term in self.terms:
            x = term.value(values[term.feature])
            low += term.beyond_haiku * x
            high += term.opus * x
        return low, high

    def level(self, score: float, config: ComplexityConfig | None = None) -> str:
        """Return the ``complexity`` level of a score, by ``config``'s thresholds where set."""
        simple_below, complex_from = self.thresholds(config)
        if score >= complex_from:
            return "complex"
        return "simple" if score < simple_below else "moderate"

    def thresholds(self, config: ComplexityConfig | None = None) -> tuple[float, float]:
        """Return (simple_below, complex_from): the config's where set, else the model's."""
        if config is None:
            return self.simple_below, self.complex_from
        low = self.simple_below if config.simple_below is None else config.simple_below
        high = self.complex_from if config.complex_from is None else config.complex_from
        return low, high

    def contributions(self, features: Features) -> list[Contribution]:
        """Return what each term added to the features' two logits, largest first (zeros left
        out).

        The intercepts (an average request's logits) and the contributions sum to the logits
        :func:`score_of` makes ``complexity_score`` of (before rounding).
        """
        found = [
            Contribution(t.label, value, t.beyond_haiku * x, t.opus * x)
            for t in self.terms
            for value in (getattr(features, t.feature),)
            for x in (t.value(value),)
        ]
        return sorted((c for c in found if c.beyond_haiku or c.opus),
                      key=lambda c: -max(abs(c.beyond_haiku), abs(c.opus)))


def probability(logit: float) -> float:
    """The logistic function, safe at any logit."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    z = math.exp(logit)
    return z / (1.0 + z)


def score_of(beyond_haiku: float, opus: float) -> float:
    """``complexity_score`` of the two boundaries' logits: the expected tier, 0-100."""
    return 50.0 * (probability(beyond_haiku) + probability(opus))


def parse_scorer(data: bytes, source: str = SCORER_FILE) -> Scorer:
    """Decode and check a scorer file.

    Raises:
        ValueError: the file is malformed, or a term names a feature that does not exist or
            transforms it in a way its type does not allow.
    """
    try:
        spec = msgspec.json.decode(data, type=ScorerFile)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{source}: {exc}") from exc
    # The annotations as written (this module's annotations are strings): 'int', 'str', ...
    kinds = {name: Features.__annotations__[name] for name in feature_names()}
    problems = []
    if spec.format != FORMAT:
        problems.append(f"{source}: format {spec.format}; this router reads format {FORMAT}")
    for i, term in enumerate(spec.terms):
        kind = kinds.get(term.feature)
        where = f"{source}: terms[{i}] ({term.feature})"
        if kind is None:
            problems.append(f"{where}: no such feature")
        elif term.equals is not None and kind not in ("str", "tuple[str, ...]"):
            problems.append(f"{where}: 'equals' needs a string feature, not {kind}")
        elif term.equals is None and kind not in ("int", "float", "bool"):
            problems.append(f"{where}: a {kind} feature needs 'equals'")
    if spec.thresholds.simple_below > spec.thresholds.complex_from:
        problems.append(f"{source}: thresholds.simple_below is above complex_from")
    if problems:
        raise ValueError("; ".join(problems))
    terms = tuple(Term(t.feature, *t.weights, t.equals, t.cap, t.log, t.center)
                  for t in spec.terms)
    return Scorer(spec.intercepts, terms, spec.thresholds.simple_below,
                  spec.thresholds.complex_from, spec)


@cache
def default_scorer() -> Scorer:
    """Return the model shipped in the package (read once: it never changes while running)."""
    data = resources.files("router.routing").joinpath(SCORER_FILE).read_bytes()
    return parse_scorer(data)
