"""/metrics: exact totals, bounded labels, the cost header, and sums across workers."""

from __future__ import annotations

import json
import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest

from router.fake import Fail, FakeUpstream, Reply
from tests import procs
from tests.conftest import API_KEY, config_text, post, scrape, total
from tests.procs import wait_for

PROMPT = [{"role": "user", "content": "hello"}]


def test_tokens_and_cost_equal_what_the_upstream_billed(fake: FakeUpstream, start_proxy: Any
                                                        ) -> None:
    url = start_proxy()  # passthrough: each request keeps its model
    client = anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=0)
    fake.script(
        Reply(usage={"input_tokens": 1000, "output_tokens": 500,
                     "cache_read_input_tokens": 10_000, "cache_creation_input_tokens": 2000,
                     "cache_creation": {"ephemeral_5m_input_tokens": 2000,
                                        "ephemeral_1h_input_tokens": 0}}),
        Reply(usage={"input_tokens": 200, "output_tokens": 40,
                     "cache_creation_input_tokens": 300,
                     "cache_creation": {"ephemeral_5m_input_tokens": 0,
                                        "ephemeral_1h_input_tokens": 300}}),
        # Not retried (the upstream says so), so it reaches the client and the metrics.
        Fail(529, "overloaded_error", headers={"x-should-retry": "false"}),
    )
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=64,
                                                   messages=PROMPT)
    # pricing.md's worked example: $0.021.
    assert raw.headers["x-router-cost-usd"] == "0.021"
    with client.messages.stream(model="claude-opus-4-7", max_tokens=64, messages=PROMPT) as s:
        s.get_final_message()
    with pytest.raises(anthropic.InternalServerError):
        client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=PROMPT)
    billed = fake.billed
    assert len(billed) == 2

    def settled() -> bool:
        return total(scrape(url), "router_requests_total") == 3

    assert wait_for(settled)
    samples = scrape(url)
    for kind, field in [("input", "input_tokens"), ("output", "output_tokens"),
                        ("cache_read", "cache_read_input_tokens")]:
        assert total(samples, "router_tokens_total", type=kind) == sum(
            b.get(field, 0) for b in billed), kind
    assert total(samples, "router_tokens_total", type="cache_write_5m") == 2000
    assert total(samples, "router_tokens_total", type="cache_write_1h") == 300
    # Sonnet: $0.021; Opus stream: 200×5 + 40×25 + 300×10 = 5,000 µ$.
    spent = total(samples, "router_cost_usd_total")
    assert Decimal(str(round(spent, 9))) == Decimal("0.026")
    assert total(samples, "router_cost_usd_total", model="claude-opus-4-7") == 0.005
    assert total(samples, "router_requests_total", status="overloaded_error",
                 model="claude-haiku-4-5") == 1
    assert total(samples, "router_upstream_errors_total", type="overloaded_error") == 1
    assert total(samples, "router_counterfactual_cost_usd_total") == spent  # nothing rerouted
    assert total(samples, "router_time_to_first_token_seconds_count", stream="true") == 1


def test_savings_are_exported_as_the_counterfactual(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy("default: haiku\n")
    fake.script(Reply(usage={"input_tokens": 1000, "output_tokens": 1000}))
    status, headers, _ = post(url, json.dumps({"model": "claude-opus-4-7", "max_tokens": 8,
                                                "messages": PROMPT}).encode())
    assert status == 200
    assert headers["x-router-model"] == "claude-haiku-4-5"
    assert headers["x-router-cost-usd"] == "0.006"  # 1000×1 + 1000×5 µ$
    assert wait_for(lambda: total(scrape(url), "router_requests_total") == 1)
    samples = scrape(url)
    assert total(samples, "router_counterfactual_cost_usd_total",
                 requested_model="claude-opus-4-7") == 0.03  # 1000×5 + 1000×25 µ$
    assert total(samples, "router_cost_usd_total", rule="default") == 0.006


def test_client_strings_never_become_labels(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy()
    for model in ("claude-made-up-9", "claude-fable-5-2"):
        post(url, json.dumps({"model": model, "max_tokens": 8, "messages": PROMPT}).encode())
    post(url, b"{not json")
    assert wait_for(lambda: total(scrape(url), "router_requests_total") == 3)
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    assert "claude-made-up-9" not in text and "claude-fable-5-2" not in text
    samples = scrape(url)
    # Upstream refuses the made-up id (404) and answers the real but unpriced one.
    assert total(samples, "router_unpriced_requests_total", model="other") == 1
    assert total(samples, "router_requests_total", model="other", status="not_found_error") == 1
    assert total(samples, "router_requests_total", rule="none",
                 status="invalid_request_error") == 1
    assert API_KEY not in text
    assert total(samples, "router_config_info") == 1


def test_workers_sum_their_metrics_in_a_private_directory(fake: FakeUpstream, tmp_path: Path
                                                          ) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(config_text(fake.url))
    base = tmp_path / "metrics"
    base.mkdir()
    env = {"ROUTER_UPSTREAM_URL": fake.url, "ROUTER_METRICS_DIR": str(base)}
    with procs.router("serve", "--config", str(path), "--workers", "2", "--log-level",
                      "warning", env=env) as server:
        url = server.url
        dirs = list(base.iterdir())
        assert len(dirs) == 1 and dirs[0].name.startswith("router-metrics-")
        request = json.dumps({"model": "claude-sonnet-4-6", "max_tokens": 8,
                              "messages": PROMPT}).encode()

        def pids() -> set[str]:
            return {f.stem.rsplit("_", 1)[1] for f in dirs[0].glob("counter_*.db")}

        # The kernel spreads connections over the workers as it likes: send batches of
        # concurrent requests (new connections) until both have served some.
        n = 0
        with ThreadPoolExecutor(8) as pool:
            while len(pids()) < 2 and n < 800:
                list(pool.map(lambda _: post(url, request), range(40)))
                n += 40
        assert len(pids()) == 2, "both workers should have served requests"
        # Whichever worker answers the scrape, it reports the sum over both.
        for _ in range(4):
            assert total(scrape(url), "router_requests_total") == n
        server.stop(20)
    assert list(base.iterdir()) == [], "the metrics directory is removed on exit"


def test_metrics_exposition_names_follow_conventions(proxy_url: str) -> None:
    text = urllib.request.urlopen(proxy_url + "/metrics").read().decode()
    names = set(re.findall(r"^# TYPE (\w+) (\w+)", text, re.M))
    for name, kind in names:
        assert name.startswith("router_")
        if kind == "counter":
            assert name.endswith("_total")
    assert ("router_cost_usd_total", "counter") in names
    assert ("router_request_duration_seconds", "histogram") in names
