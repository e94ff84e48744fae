"""`router demo` runs the whole thing with no key: metrics fill up across tiers and rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from router.accounting.ledger_files import Reader
from router.cli import cli
from tests import procs
from tests.conftest import scrape, total
from tests.procs import wait_for


def test_demo_fills_the_metrics_with_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with procs.router("demo", "--rate", "25", "--duration", "20", timeout=20) as demo:
        assert wait_for(lambda: total(scrape(demo.url), "router_requests_total") >= 30, 15)
        samples = scrape(demo.url)
        tiers = {k.split('tier="')[1].split('"')[0] for k in samples
                 if k.startswith("router_requests_total{")}
        assert {"haiku", "sonnet", "opus"} <= tiers
        assert total(samples, "router_cost_usd_total") > 0
        assert total(samples, "router_counterfactual_cost_usd_total") > 0
        demo.stop(20)
    err = demo.output()
    assert "router explain" in err
    # The demo keeps its own ledger, which `router simulate` replays (at no saving: same rules).
    ledger = re.search(r"router simulate --ledger (\S+)", err)
    assert ledger, err
    assert Reader(Path(ledger[1])).count() >= 30
    result = CliRunner().invoke(cli, ["simulate", "--ledger", ledger[1], "--config",
                                      "router.yaml", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["total"]["requests"] >= 30 and report["total"]["saved_usd"] == "0"
