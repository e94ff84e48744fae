"""Settings: every environment variable read once, flags first, ``.env`` last; nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import metrics as prometheus_metrics
from prometheus_client import values as prometheus_values

from router.accounting.metrics import Metrics
from router.cli import cli
from router.settings import Settings, SettingsError, environ_with_dotenv

EVERY_VARIABLE = {
    "ROUTER_CONFIG": "/etc/router/router.yaml",
    "ROUTER_UPSTREAM_URL": "http://127.0.0.1:9999",
    "ROUTER_LOG_LEVEL": "warning",
    "ROUTER_TIKTOKEN_FILE": "/opt/cl100k_base.tiktoken",
    "ROUTER_METRICS_DIR": "/var/run/router",
    "PROMETHEUS_MULTIPROC_DIR": "/var/run/router/shared",
    "ROUTER_STATE_URL": "redis://:secret@cache:6379/0",
    "ROUTER_STATE_DIR": "/var/lib/router",
    "XDG_STATE_HOME": "/home/me/.state",
}


def test_every_variable_lands_in_its_field() -> None:
    settings = Settings.from_env(EVERY_VARIABLE)
    assert settings == Settings(
        config_path="/etc/router/router.yaml", upstream_url="http://127.0.0.1:9999",
        log_level="warning", tiktoken_file="/opt/cl100k_base.tiktoken",
        metrics_dir="/var/run/router", multiprocess_dir="/var/run/router/shared",
        state_url="redis://:secret@cache:6379/0", state_dir="/var/lib/router")
    without_dir = {k: v for k, v in EVERY_VARIABLE.items() if k != "ROUTER_STATE_DIR"}
    assert Settings.from_env(without_dir).state_dir == "/home/me/.state/claude-router"


def test_flags_win_over_the_environment() -> None:
    settings = Settings.from_env(EVERY_VARIABLE, config_path="mine.yaml", log_level="debug")
    assert (settings.config_path, settings.log_level) == ("mine.yaml", "debug")


def test_defaults_without_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({}) == Settings()
    (tmp_path / "router.yaml").write_text("tiers: {}\n")
    assert Settings.from_env({}).config_path == "router.yaml"


def test_a_bad_log_level_is_named() -> None:
    with pytest.raises(SettingsError, match="ROUTER_LOG_LEVEL='loud'"):
        Settings.from_env({"ROUTER_LOG_LEVEL": "loud"})


def test_dotenv_fills_in_under_the_environment(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("ROUTER_UPSTREAM_URL=http://from-dotenv:1\nROUTER_LOG_LEVEL=error\n")
    monkeypatch.setenv("ROUTER_LOG_LEVEL", "debug")
    merged = environ_with_dotenv(str(env_file))
    assert merged["ROUTER_UPSTREAM_URL"] == "http://from-dotenv:1"
    assert merged["ROUTER_LOG_LEVEL"] == "debug"
    assert "ROUTER_UPSTREAM_URL" not in os.environ
    assert environ_with_dotenv(str(tmp_path / "absent")) == dict(os.environ)


def test_cli_reads_dotenv_and_leaves_the_environment_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("ROUTER_UPSTREAM_URL=http://127.0.0.1:7777\n")
    before = dict(os.environ)
    result = CliRunner().invoke(cli, ["check", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["upstream"]["base_url"] == "http://127.0.0.1:7777"
    assert dict(os.environ) == before


def test_cli_names_a_bad_variable_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_LOG_LEVEL", "loud")
    result = CliRunner().invoke(cli, ["check"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "router: ROUTER_LOG_LEVEL='loud' is not one of debug, info, warning, error"]


def test_metrics_touch_nothing_outside_themselves() -> None:
    created, value_class = prometheus_metrics._use_created, prometheus_values.ValueClass
    metrics = Metrics()
    metrics.requests.labels("haiku", "m", "r", "2xx").inc()
    assert (prometheus_metrics._use_created, prometheus_values.ValueClass) == (
        created, value_class)
    body, _ = metrics.exposition()
    assert b"router_requests_total{" in body
    assert b"_created" not in body
