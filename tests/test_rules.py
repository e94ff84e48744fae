"""Rules in router.yaml: conditions, targets, guards, and `router check`'s report."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from router.cli import cli
from router.config_file import ConfigError
from router.routing.features import Features
from router.routing.rules import compile_condition, feature_kinds, parse_policy
from tests.conftest import config_text, make_features

KINDS = feature_kinds(Features)


@pytest.mark.parametrize(
    ("when", "changes", "expected"),
    [
        ({"complexity": "simple"}, {}, True),
        ({"complexity": "complex"}, {}, False),
        ({"complexity": ["moderate", "complex"]}, {"complexity": "complex"}, True),
        ({"input_tokens": {"gt": 1000, "lte": 8000}}, {"input_tokens": 8000}, True),
        ({"input_tokens": {"gt": 1000, "lte": 8000}}, {"input_tokens": 8001}, False),
        ({"tool_names": ["mcp__*"]}, {"tool_names": ("Bash", "mcp__github__pr")}, True),
        ({"tool_names": "Bash"}, {"tool_names": ("Read",)}, False),
        ({"app": "c*"}, {"app": "cli"}, True),
        ({"app": {"not_in": ["cli", "batch"]}}, {"app": "cli"}, False),
        ({"history_thinking": True}, {"history_thinking": True}, True),
        ({"any": [{"tools": {"gt": 0}}, {"images": {"gte": 1}}]}, {"images": 2}, True),
        ({"all": [{"tools": {"gt": 0}}, {"images": {"gte": 1}}]}, {"images": 2}, False),
        ({"not": {"complexity": "simple"}}, {}, False),
        ({"complexity": "simple", "input_tokens": {"lt": 10}}, {"input_tokens": 50}, False),
    ],
)
def test_conditions(when: dict[str, object], changes: dict[str, object], expected: bool) -> None:
    condition = compile_condition(when, KINDS)
    assert condition(make_features(**changes)) is expected
    assert condition.describe()


def write_config(tmp_path: Path, policy_yaml: str) -> str:
    path = tmp_path / "router.yaml"
    path.write_text(config_text("http://127.0.0.1:9", policy_yaml))
    return str(path)


BROKEN = """\
default: sonnet
rules:
  - name: typo-feature
    when: {complexty: simple}
    tier: haiku
  - name: wrong-type
    when:
      input_tokens: {gt: lots}
    tier: haiku
  - name: bad-op
    when: {complexity: {like: simple}}
    tier: haiku
  - name: no-target
    when: {complexity: simple}
  - name: two-targets
    tier: haiku
    model: claude-opus-4-7
  - name: catch-all
    tier: sonnet
  - name: shadowed
    when: {tools: {gt: 3}}
    tier: opus
  - {name: unknown-key, tier: haiku, colour: red}
  - name: not-a-tier
    tier: gpt
"""


def test_check_reports_every_problem_with_its_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, BROKEN)
    result = CliRunner().invoke(cli, ["check", "--config", path])
    assert result.exit_code == 1
    out = result.output
    lines = [line for line in out.splitlines() if line.strip()]
    offset = config_text("http://127.0.0.1:9", "").count("\n")

    def line_of(name: str) -> int:
        return offset + BROKEN.splitlines().index(next(
            ln for ln in BROKEN.splitlines() if name in ln)) + 1

    expected = {
        "typo-feature": ("unknown feature 'complexty'", line_of("complexty")),
        "wrong-type": ("'input_tokens' takes a number", line_of("gt: lots")),
        "bad-op": ("unknown operator 'like'", line_of("like")),
        "no-target": ("needs a target", line_of("name: no-target")),
        "two-targets": ("give one target", line_of("name: two-targets")),
        "shadowed": ("unreachable: rule 'catch-all'", line_of("name: shadowed")),
        "unknown-key": ("unknown field `colour`", line_of("unknown-key")),
        "not-a-tier": ("Invalid enum value 'gpt'", line_of("tier: gpt")),
    }
    for rule, (message, line) in expected.items():
        hits = [ln for ln in lines if message in ln]
        assert hits, f"{rule}: no line with {message!r} in:\n{out}"
        assert any(f"(line {line})" in ln for ln in hits), f"{rule}: want line {line}: {hits}"
    assert len(lines) == len(expected)


def test_check_accepts_the_shipped_config() -> None:
    result = CliRunner().invoke(cli, ["check", "--config", "router.yaml"])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def test_shipped_router_yaml_is_the_embedded_default() -> None:
    from router.config_file import default_config_text

    assert Path("router.yaml").read_text() == default_config_text()


def test_bad_default_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(config_text("http://x", "default: fastest\n"))
    assert "default (line" in info.value.problems[0]
    assert "fastest" in info.value.problems[0]
