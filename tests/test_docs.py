"""The README keeps its contract: every metric, feature and CLI command is documented."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner
from prometheus_client.metrics import MetricWrapperBase

from router.accounting.metrics import Metrics
from router.cli import cli
from router.routing.features import feature_names

README = Path("README.md").read_text()


def test_every_metric_is_documented_with_its_labels() -> None:
    metrics = [m for m in vars(Metrics()).values() if isinstance(m, MetricWrapperBase)]
    assert len(metrics) >= 17
    for metric in metrics:
        name = metric._name + ("_total" if metric._type == "counter" else "")
        row = next((line for line in README.splitlines() if line.startswith(f"| `{name}` |")),
                   None)
        assert row, f"{name} is not in the README's metrics table"
        cells = row.split("|")
        assert f"| {metric._type} |" in row, f"{name}: type"
        documented = set(re.findall(r"`(\w+)`", cells[3]))
        assert documented == set(metric._labelnames), f"{name}: labels"


def test_every_feature_is_documented() -> None:
    for name in feature_names():
        assert f"| `{name}` |" in README, name


def test_every_command_is_documented() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    commands = re.findall(r"^  (\w+)  ", result.output, re.M)
    assert set(commands) == {"serve", "check", "explain", "demo", "keys"}
    for command in commands:
        assert f"router {command}" in README
