"""`router demo` runs the whole thing with no key: metrics fill up across tiers and rules."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.test_metrics import scrape, total
from tests.test_routing_e2e import _free_port, _ready, wait_for


def test_demo_fills_the_metrics_with_no_key() -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "router", "demo", "--port", str(port), "--rate", "25",
         "--duration", "20"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _ready(url), 20), "demo did not start"
        assert wait_for(lambda: total(scrape(url), "router_requests_total") >= 30, 15)
        samples = scrape(url)
        tiers = {k.split('tier="')[1].split('"')[0] for k in samples
                 if k.startswith("router_requests_total{")}
        assert {"haiku", "sonnet", "opus"} <= tiers
        assert total(samples, "router_cost_usd_total") > 0
        assert total(samples, "router_counterfactual_cost_usd_total") > 0
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "router explain" in err
