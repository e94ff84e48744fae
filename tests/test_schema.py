"""`router schema`: the shipped JSON Schema is what the command prints, editors find it, and it
never disagrees with `router check` on keys and types."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from router.cli import cli
from router.config_file import ConfigError, decode_config
from router.routing.rules import compile_policy
from router.schema import SCHEMA_FILE, config_schema
from tests.conftest import config_text

VALIDATOR = jsonschema.Draft202012Validator(config_schema())
SHIPPED = yaml.safe_load(Path("router.yaml").read_text())


def check_accepts(data: Any) -> bool:
    """What `router check` says of ``data``, less the YAML parsing (which is slow in bulk)."""
    try:
        compile_policy(decode_config(copy.deepcopy(data)))
    except ConfigError:
        return False
    return True


def schema_accepts(data: Any) -> bool:
    return VALIDATOR.is_valid(data)


def test_the_shipped_schema_is_what_router_schema_prints() -> None:
    result = CliRunner().invoke(cli, ["schema"])
    assert result.exit_code == 0, result.output
    shipped = resources.files("router").joinpath(SCHEMA_FILE).read_text("utf-8")
    assert result.output == shipped, "run `router schema > router/router.schema.json`"
    jsonschema.Draft202012Validator.check_schema(json.loads(shipped))


def test_router_yaml_points_editors_at_the_schema() -> None:
    first = Path("router.yaml").read_text().splitlines()[0]
    assert first == f"# yaml-language-server: $schema=router/{SCHEMA_FILE}"
    assert Path("router", SCHEMA_FILE).is_file()


def test_field_docstrings_become_descriptions() -> None:
    tier = config_schema()["$defs"]["TierConfig"]["properties"]
    assert tier["context_window"]["description"].startswith("Input tokens the tier's model")
    when = config_schema()["$defs"]["When"]["properties"]
    assert "complexity" in when and when["input_tokens"]["description"]


POLICIES = {
    "shipped": None,
    "passthrough": "default: requested\n",
    "every kind of test": """\
default: sonnet
rules:
  - name: a
    when:
      all:
        - complexity: [moderate, complex]
        - input_tokens: {gt: 1000, lte: 8000}
        - not: {tool_names: ["mcp__*"]}
        - any: [{stream: true}, {thinking_budget: {in: [0, 1024]}}]
        - app: "c*"
        - user_agent: {glob: "claude-cli/*", ne: x}
    tier: opus
  - {name: guard, when: {app: ci}, cap: sonnet, floor: haiku}
""",
}

BROKEN = {
    "unknown top-level key": "colour: red\ndefault: sonnet\n",
    "unknown rule key": "rules:\n  - {name: a, tier: haiku, colour: red}\n",
    "unknown feature": "rules:\n  - {name: a, when: {complexty: simple}, tier: haiku}\n",
    "unknown operator": "rules:\n  - {name: a, when: {input_tokens: {like: 3}}, tier: haiku}\n",
    "order operator on a string": "rules:\n  - {name: a, when: {app: {gt: 3}}, tier: haiku}\n",
    "glob on a number": "rules:\n  - {name: a, when: {tools: {glob: '1*'}}, tier: haiku}\n",
    "string for a number": "rules:\n  - {name: a, when: {tools: many}, tier: haiku}\n",
    "bool for a number": "rules:\n  - {name: a, when: {tools: true}, tier: haiku}\n",
    "empty in-list": "rules:\n  - {name: a, when: {app: {in: []}}, tier: haiku}\n",
    "empty test": "rules:\n  - {name: a, when: {app: {}}, tier: haiku}\n",
    "unknown tier": "rules:\n  - {name: a, tier: gpt}\n",
    "rules not a list": "rules: {name: a}\n",
    "when not a mapping": "rules:\n  - {name: a, when: always, tier: haiku}\n",
    "quoted number": "server: {max_body_bytes: '1000'}\n",
}


@pytest.mark.parametrize("policy", POLICIES.values(), ids=POLICIES.keys())
def test_valid_configs_pass_both(policy: str | None) -> None:
    data = yaml.safe_load(config_text("http://127.0.0.1:9", policy))
    assert check_accepts(data)
    assert schema_accepts(data), list(VALIDATOR.iter_errors(data))


@pytest.mark.parametrize("policy", BROKEN.values(), ids=BROKEN.keys())
def test_broken_configs_fail_both(policy: str) -> None:
    text = config_text("http://127.0.0.1:9", "default: sonnet\n")
    data = yaml.safe_load(text)
    data.update(yaml.safe_load(policy))
    assert not check_accepts(data)
    assert not schema_accepts(data)


def paths(node: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key and list index of ``node``, depth first."""
    yield at
    children = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else []
    for key, child in children:
        yield from paths(child, (*at, key))


def other_type(value: Any) -> Any:
    """A value of another JSON type than ``value``."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, int | float):
        return "seven"
    if isinstance(value, str):
        return 7
    return "x"


def at(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def test_check_and_schema_agree_on_every_mutation_of_the_shipped_config() -> None:
    """Each key of router.yaml given a value of the wrong type, and each mapping given an extra
    key: `router check` and the schema reach the same verdict on every one."""
    assert check_accepts(SHIPPED) and schema_accepts(SHIPPED)
    disagreements = []
    tried = 0
    for path in paths(SHIPPED):
        mutants = []
        if path:
            mutant = copy.deepcopy(SHIPPED)
            at(mutant, path[:-1])[path[-1]] = other_type(at(SHIPPED, path))
            mutants.append((f"{path} -> wrong type", mutant))
        if isinstance(at(SHIPPED, path), dict):
            mutant = copy.deepcopy(SHIPPED)
            at(mutant, path)["zz_unknown"] = 1
            mutants.append((f"{path} + unknown key", mutant))
        for label, data in mutants:
            tried += 1
            if check_accepts(data) != schema_accepts(data):
                disagreements.append(f"{label}: check {check_accepts(data)}, "
                                     f"schema {schema_accepts(data)}")
    assert tried > 200
    assert not disagreements, "\n".join(disagreements)
