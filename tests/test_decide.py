"""Stage 3: first match wins, guards bound, pins hold, windows and thinking are respected."""

from __future__ import annotations

import msgspec

from router.routing.capabilities import Needs
from router.routing.decide import decide
from router.routing.rules import Policy, parse_policy
from router.routing.ruling import Reads
from tests.conftest import config_text, make_features
from tests.test_conversations import conversation, history, state

POLICY = """\
default: sonnet
rules:
  - name: batch-app-pinned
    when: {app: batch}
    pin: true
  - name: never-above-sonnet-for-ci
    when: {app: ci}
    cap: sonnet
  - name: tools-need-sonnet
    when: {tools: {gt: 0}}
    floor: sonnet
  - name: hard
    when: {complexity: complex}
    tier: opus
  - name: simple
    when: {complexity: simple}
    tier: haiku
  - name: thinking-may-move
    when: {complexity: moderate, history_thinking: true}
    tier: haiku
    allow_model_switch: true
"""


def policy(text: str = POLICY) -> Policy:
    return parse_policy(config_text("http://x", text))


def test_first_match_wins() -> None:
    d = decide(make_features(complexity="complex"), policy())
    assert (d.model, d.tier, d.rule) == ("claude-opus-4-7", "opus", "hard")
    d = decide(make_features(complexity="simple"), policy())
    assert (d.model, d.rule) == ("claude-haiku-4-5", "simple")


def test_default_catches_the_rest() -> None:
    d = decide(make_features(complexity="moderate"), policy())
    assert (d.model, d.rule) == ("claude-sonnet-4-6", "default")


def test_requested_default_keeps_the_model() -> None:
    d = decide(make_features(complexity="moderate", requested_model="claude-opus-4-5"),
               policy("default: requested\n"))
    assert d.model == "claude-opus-4-5"
    assert d.tier == "opus"


def test_pin_keeps_the_requested_model_even_under_guards() -> None:
    f = make_features(app="batch", complexity="simple", tools=2, requested_model="claude-opus-4-7")
    d = decide(f, policy())
    assert (d.model, d.rule) == ("claude-opus-4-7", "batch-app-pinned")


def test_cap_and_floor_guards_apply_wherever_they_stand() -> None:
    d = decide(make_features(app="ci", complexity="complex"), policy())
    assert (d.model, d.rule) == ("claude-sonnet-4-6", "hard")
    assert "bounded to sonnet" in d.reason
    d = decide(make_features(tools=1, complexity="simple"), policy())
    assert (d.model, d.rule) == ("claude-sonnet-4-6", "simple")


def test_context_window_moves_up_a_tier() -> None:
    f = make_features(complexity="simple", input_tokens=190_000, max_tokens=16_000)
    d = decide(f, policy())
    assert d.model == "claude-sonnet-4-6"
    assert "context" in d.reason
    # Even a cap does not squeeze a request into a window that cannot hold it.
    d = decide(make_features(app="ci", complexity="simple", input_tokens=250_000), policy())
    assert d.tier == "sonnet"


def test_a_rule_may_allow_a_thinking_conversation_to_move() -> None:
    signed = conversation(history(signed_by="claude-opus-4-7"), state("claude-opus-4-7"))
    f = make_features(complexity="moderate", history_thinking=True)
    d = decide(f, policy(), conversation=signed)
    assert (d.model, d.rule, d.action) == ("claude-haiku-4-5", "thinking-may-move", "turn")
    assert d.strip == signed.foreign("claude-haiku-4-5") != frozenset()


def test_unknown_models_pass_through_untouched() -> None:
    d = decide(make_features(complexity="simple", requested_model="gpt-4o", requested_tier="other"),
               policy())
    assert (d.model, d.tier, d.rule, d.action) == ("gpt-4o", None, "passthrough", "passthrough")
    # ...unless a rule names the requested model explicitly.
    named = policy(POLICY.replace("  - name: hard", "  - name: gpt-to-haiku\n"
                                "    when: {requested_model: gpt-*}\n    tier: haiku\n"
                                "  - name: hard", 1))
    f = make_features(complexity="complex", requested_model="gpt-4o", requested_tier="other")
    d = decide(f, named)
    assert (d.model, d.rule) == ("claude-haiku-4-5", "gpt-to-haiku")


def test_explain_traces_every_rule() -> None:
    d = decide(make_features(complexity="simple", tools=1), policy(), explain=True)
    trace = {t.rule: t for t in d.trace}
    assert list(trace) == ["batch-app-pinned", "never-above-sonnet-for-ci", "tools-need-sonnet",
                           "hard", "simple", "thinking-may-move"]
    assert trace["tools-need-sonnet"].matched
    assert trace["tools-need-sonnet"].effect == "floor sonnet"
    assert not trace["hard"].matched
    assert trace["simple"].matched
    assert trace["thinking-may-move"].effect == "not tried"
    assert decide(make_features(), policy()).trace == ()


def test_the_rules_decide_alike_from_the_memo_as_afresh() -> None:
    # The rules' part of a decision is memoised by what it reads, numbers reduced to their place
    # among the rules' constants and sizes kept only past a window: every request here, decided
    # by a warm memo, must equal the same request decided afresh (explain bypasses the memo).
    numeric = policy(POLICY.replace("  - name: hard", "  - name: mid-size\n"
                                    "    when: {input_tokens: {gt: 1000, lte: 8000}, steps: 3}\n"
                                    "    tier: opus\n  - name: hard", 1))
    sizes = [0, 999, 1000, 1001, 7999, 8000, 8001, 63_000, 64_000, 64_001, 190_000, 250_000]
    cases = []
    for tokens in sizes:
        for max_tokens in (100, 64_000, 200_000):
            for extra in ({}, {"steps": 3}, {"app": "ci"}, {"tools": 2}, {"complexity": "complex"},
                          {"thinking": "enabled"}, {"requested_model": "claude-opus-4-7"}):
                cases.append(make_features(input_tokens=tokens, max_tokens=max_tokens, **extra))
    decided = 0
    for needs_thinking in ("none", "enabled", "disabled"):
        for f in cases:
            decided += 1
            needs = Needs(tokens=f.input_tokens + f.max_tokens, max_tokens=f.max_tokens,
                          thinking=needs_thinking, effort="", betas=frozenset())
            warm = decide(f, numeric, needs=needs)
            fresh = decide(f, numeric, needs=needs, explain=True)
            assert msgspec.structs.replace(fresh, trace=()) == warm, (f, needs)
    remembered = numeric.memo[Reads].memo
    assert 0 < len(remembered) < decided / 2, "the memo never filled, or seldom hit"
