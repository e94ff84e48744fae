"""The complexity model: the shipped file, its inference, its explanation, its reproducibility."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import msgspec
import pytest

from router.config import ComplexityConfig
from router.config_file import ConfigError, parse_config
from router.parse import parse_messages
from router.routing.classify import classify
from router.routing.features import feature_names
from router.routing.scorer import default_scorer, parse_scorer, probability, score_of
from router.routing.tokens import TokenCounter
from tests.conftest import config_text

REPO = Path(__file__).resolve().parent.parent


def shipped() -> dict[str, object]:
    return json.loads(resources.files("router.routing").joinpath("scorer.json").read_text())


def test_inference_matches_the_fit_on_its_check_rows() -> None:
    data = shipped()
    scorer = default_scorer()
    checks = data["checks"]
    assert isinstance(checks, list) and len(checks) >= 5
    for check in checks:
        assert scorer.score(check["values"]) == pytest.approx(check["score"], abs=1e-3), check["id"]


def test_contributions_and_base_add_up_to_the_score() -> None:
    body = {"model": "claude-opus-4-7", "max_tokens": 16000, "thinking": {"type": "adaptive"},
            "messages": [{"role": "user", "content": "Prove that sqrt(2) is irrational, "
                                                     "rigorously, for a number theory course."}]}
    parsed = parse_messages(msgspec.json.encode(body), {})
    f = classify(parsed, TokenCounter.load().estimate(parsed.request), token_factor=1.0,
                 requested_tier="opus")
    scorer = default_scorer()
    found = scorer.contributions(f)
    up = scorer.intercepts[0] + sum(c.beyond_haiku for c in found)
    opus = scorer.intercepts[1] + sum(c.opus for c in found)
    assert abs(score_of(up, opus) - f.complexity_score) < 0.06
    # The expected tier: both boundaries' probabilities count, each for half the scale.
    assert abs(score_of(up, opus) - 50 * (probability(up) + probability(opus))) < 1e-9
    assert "proof" in {c.term for c in found}
    size = [max(abs(c.beyond_haiku), abs(c.opus)) for c in found]
    assert size == sorted(size, reverse=True)


def test_the_score_is_the_expected_tier_on_0_to_100() -> None:
    assert score_of(-50.0, -50.0) == pytest.approx(0.0)
    assert score_of(0.0, -50.0) == pytest.approx(25.0)
    assert score_of(50.0, 0.0) == pytest.approx(75.0)
    assert score_of(800.0, 800.0) == pytest.approx(100.0)  # no overflow at absurd logits
    assert score_of(-800.0, -800.0) == pytest.approx(0.0)


def test_explain_shows_each_features_logits_for_both_boundaries() -> None:
    body = {"model": "claude-sonnet-4-6", "max_tokens": 200,
            "messages": [{"role": "user", "content": "Translate 'good morning' to French."}]}
    done = subprocess.run([sys.executable, "-m", "router", "explain", "-", "--json"],
                          cwd=REPO, input=json.dumps(body), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    c = json.loads(done.stdout)["complexity"]
    assert c["boundaries"] == ["beyond_haiku", "opus"]
    for k in range(2):
        total = c["base"][k] + sum(t["logits"][k] for t in c["contributions"])
        assert total == pytest.approx(c["logits"][k], abs=0.02)
    assert score_of(*c["logits"]) == pytest.approx(c["score"], abs=0.06)
    assert c["level"] == "simple" and c["score"] < c["simple_below"]


def test_thresholds_come_from_the_model_unless_the_config_moves_them() -> None:
    scorer = default_scorer()
    assert scorer.thresholds(None) == (scorer.simple_below, scorer.complex_from)
    assert scorer.level(scorer.simple_below - 0.1) == "simple"
    assert scorer.level(scorer.complex_from) == "complex"
    moved = ComplexityConfig(complex_from=scorer.complex_from + 20)
    assert scorer.level(scorer.complex_from, moved) == "moderate"
    assert scorer.thresholds(moved) == (scorer.simple_below, scorer.complex_from + 20)


def test_config_rejects_crossed_thresholds() -> None:
    text = config_text("http://x", "complexity: {simple_below: 70, complex_from: 40}\n")
    with pytest.raises(ConfigError, match=r"complexity\.simple_below"):
        parse_config(text)


def test_every_term_names_a_feature_and_bad_files_are_refused() -> None:
    assert {t.feature for t in default_scorer().terms} <= set(feature_names())
    data = shipped()
    data["terms"] = [{"feature": "no_such_feature", "weights": [1.0, 1.0]}]
    with pytest.raises(ValueError, match="no such feature"):
        parse_scorer(json.dumps(data).encode())
    data["terms"] = [{"feature": "thinking", "weights": [1.0, 1.0]}]
    with pytest.raises(ValueError, match="needs 'equals'"):
        parse_scorer(json.dumps(data).encode())
    data["terms"] = []
    data["format"] = 1  # one linear score in points: a file this router cannot read
    with pytest.raises(ValueError, match="format 1"):
        parse_scorer(json.dumps(data).encode())


def _dev_set() -> Path | None:
    for parent in REPO.parents:
        candidate = parent / "shared" / "routing-eval" / "dev.jsonl"
        if candidate.is_file():
            return candidate
    return None


@pytest.mark.skipif(_dev_set() is None, reason="the development set is not beside the repo")
def test_the_fitting_script_reproduces_the_shipped_weights() -> None:
    pytest.importorskip("numpy")
    done = subprocess.run([sys.executable, "-m", "bench.fit_scorer", "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "reproduced exactly" in done.stdout
