"""`router demo` runs the whole thing with no key: metrics fill up across tiers and rules."""

from __future__ import annotations

import pytest

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
    assert "router explain" in demo.output()
