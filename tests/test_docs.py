"""The docs keep their contract: every metric, feature, command and environment variable is
documented where a reader looks for it, the README's example runs, and its map is complete."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.metrics import MetricWrapperBase

from router import settings
from router.accounting.metrics import Metrics
from router.cli import cli
from router.routing.features import feature_names

README = Path("README.md").read_text()
DOCS = Path("docs")
README_MAX_LINES = 150


def doc(name: str) -> str:
    return (DOCS / name).read_text()


def test_the_readme_stays_one_page() -> None:
    assert len(README.splitlines()) <= README_MAX_LINES


def test_every_doc_is_on_the_readme_map() -> None:
    for path in sorted(DOCS.glob("*.md")):
        assert f"(docs/{path.name})" in README, f"{path} is not linked from the README"


def test_every_metric_is_documented_with_its_labels() -> None:
    text = doc("metrics.md")
    metrics = [m for m in vars(Metrics()).values() if isinstance(m, MetricWrapperBase)]
    assert len(metrics) >= 17
    for metric in metrics:
        name = metric._name + ("_total" if metric._type == "counter" else "")
        row = next((line for line in text.splitlines() if line.startswith(f"| `{name}` |")),
                   None)
        assert row, f"{name} is not in the metrics table of docs/metrics.md"
        cells = row.split("|")
        assert f"| {metric._type} |" in row, f"{name}: type"
        documented = set(re.findall(r"`(\w+)`", cells[3]))
        assert documented == set(metric._labelnames), f"{name}: labels"


def test_every_feature_is_documented() -> None:
    text = doc("routing.md")
    for name in feature_names():
        assert f"| `{name}` |" in text, name


def test_every_command_is_documented() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    commands = re.findall(r"^  (\w+)  ", result.output, re.M)
    assert set(commands) == {"serve", "check", "explain", "demo", "keys", "schema", "simulate",
                             "ledger"}
    for command in commands:
        assert f"router {command}" in README
        assert f"router {command}" in doc("operations.md")


def test_every_environment_variable_is_documented() -> None:
    names = [value for key, value in vars(settings).items() if key.endswith("_ENV")]
    assert len(names) >= 6
    text = doc("operations.md")
    for name in names:
        assert f"| `{name}` |" in text, name


def test_the_readme_client_example_runs(proxy_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    code = re.search(r"```python\n(.*?)```", README, re.S)
    assert code is not None
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-docs-example")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(code.group(1).replace("http://127.0.0.1:8080", proxy_url), {})
    model, rule = printed.getvalue().splitlines()[0].split()
    assert (model, rule) == ("claude-sonnet-4-6", "default")
