"""Keys, budgets and rate limits through a real proxy on the fake upstream: managed keys never go
upstream, budgets warn, downgrade and refuse, rate limits answer 429 with retry-after, and the
spend a budget records equals, to the micro-dollar, a hand-computed bill of a mixed workload.

Configs are the shipped router.yaml with only the budget, keys and teams sections a test needs.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anthropic
import pytest
from click.testing import CliRunner

from router.budgets import Unavailable, key_hash
from router.budgets.counters import Counters
from router.budgets.windows import periods_at, zone_of
from router.cli import cli
from router.config import StateConfig
from router.config_file import ConfigError, parse_config
from router.fake import Drop, Fail, FakeUpstream, Reply
from router.routing.rules import parse_policy
from router.state import opened_store
from router.state.store import Charge
from tests.conftest import API_KEY, config_text, post, scrape, total
from tests.redis_server import running_redis

UPSTREAM_KEY = "sk-ant-upstream-default-0000"
TEAM_KEY = "sk-ant-upstream-research-1111"
ADMIN = "sk-router-admin-key"
ALICE = "sk-router-alice"
BOB = "sk-router-bob"
PROMPT = [{"role": "user", "content": "hello"}]


def section(text: str, name: str, body: str) -> str:
    """Replace the top-level section ``name`` of a router.yaml text (its indented lines) with
    ``body``, a YAML mapping's lines (the section's own name included)."""
    pattern = re.compile(rf"^{name}:.*\n(?:[ ].*\n|\n)*", re.M)
    replaced, count = pattern.subn(body.rstrip("\n") + "\n\n", text, count=1)
    assert count == 1, f"router.yaml has no {name} section"
    return replaced


def budget_config(upstream: str, *, budgets: str = "", keys: str = "", teams: str = "",
                  policy: str | None = "default: requested\n") -> str:
    """The shipped router.yaml on the fake, with these sections (each a YAML text whose first
    line is the section's name) instead of the shipped ones."""
    text = config_text(upstream, policy)
    for name, body in (("budgets", budgets), ("keys", keys), ("teams", teams)):
        if body:
            text = section(text, name, body)
    return text


def issued(*entries: tuple[str, str, str]) -> str:
    """``keys.issued`` lines for (name, team, key) triples, plus any extra YAML per entry."""
    return "".join(f'    - {{name: {name}, team: {team}, sha256: "{key_hash(key)}"{extra}}}\n'
                   for name, team, key, *rest in entries for extra in [rest[0] if rest else ""])


def body(model: str = "claude-opus-4-7", max_tokens: int = 64, **extra: Any) -> bytes:
    return json.dumps({"model": model, "max_tokens": max_tokens, "messages": PROMPT,
                       **extra}).encode()


def get(url: str, key: str, path: str = "/v1/router/budgets") -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.request("GET", path, headers={"x-api-key": key} if key else {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, data


def admin_report(url: str) -> dict[str, Any]:
    status, data = get(url, ADMIN)
    assert status == 200, data
    report: dict[str, Any] = json.loads(data)
    return report


def spent(url: str, scope: str, name: str, window: str = "day") -> int:
    """Micro-dollars a budget window has recorded, from the admin endpoint."""
    for row in admin_report(url)["budgets"]:
        if (row["scope"], row["name"], row["window"]) == (scope, name, window):
            return int(row["spent_micro_usd"])
    raise AssertionError(f"no {scope} {name} {window} budget in the report")


@pytest.fixture()
def managed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", UPSTREAM_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY_RESEARCH", TEAM_KEY)


def start(start_proxy: Callable[..., str], text: str) -> str:
    return start_proxy(policy=parse_policy(text, "<test>"))


# ------------------------------------------------------------------ managed keys


def test_managed_keys_never_go_upstream_and_other_keys_get_a_401(
        fake: FakeUpstream, start_proxy: Callable[..., str], managed_env: None) -> None:
    text = budget_config(fake.url, keys=f"""keys:
  mode: managed
  admin: ["{key_hash(ADMIN)}"]
  issued:
{issued(("alice", "platform", ALICE), ("bob", "research", BOB),
        ("old", "platform", "sk-router-old", ", revoked: true"))}""", teams="""teams:
  research: {upstream_key_env: ANTHROPIC_API_KEY_RESEARCH}
""")
    url = start(start_proxy, text)
    client = anthropic.Anthropic(base_url=url, api_key=ALICE, max_retries=0)
    assert client.messages.create(model="claude-haiku-4-5", max_tokens=16, messages=PROMPT)
    sent = fake.received[-1]
    assert sent.header("x-api-key") == UPSTREAM_KEY
    assert ALICE not in json.dumps(sent.headers)
    # A bearer token is replaced too, and a team's own upstream key is used for its keys.
    status, _, _ = post(url, body(), {"x-api-key": "", "authorization": f"Bearer {BOB}"})
    assert status == 200
    sent = fake.received[-1]
    assert sent.header("x-api-key") == TEAM_KEY and sent.header("authorization") is None
    # count_tokens and models go upstream with the upstream key as well.
    assert client.messages.count_tokens(model="claude-haiku-4-5", messages=PROMPT)
    assert fake.received[-1].header("x-api-key") == UPSTREAM_KEY
    received = len(fake.received)
    for key, message in [("sk-ant-someone-elses", "invalid x-api-key"),
                         ("sk-router-old", "invalid x-api-key: this key was revoked")]:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            anthropic.Anthropic(base_url=url, api_key=key, max_retries=0).messages.create(
                model="claude-haiku-4-5", max_tokens=16, messages=PROMPT)
        envelope = caught.value.body
        assert isinstance(envelope, dict)
        assert envelope["error"] == {"type": "authentication_error", "message": message}
        assert caught.value.response.headers["request-id"].startswith("req_")
    assert len(fake.received) == received, "a refused key reached the upstream"


def test_managed_mode_without_its_upstream_key_does_not_start(fake: FakeUpstream,
                                                               tmp_path: Path) -> None:
    text = budget_config(fake.url, keys="keys:\n  mode: managed\n")
    config = tmp_path / "router.yaml"
    config.write_text(text)
    result = CliRunner().invoke(cli, ["serve", "--config", str(config), "--port", "0"],
                                env={"ANTHROPIC_API_KEY": ""})
    assert result.exit_code == 1
    assert "keys.mode is managed but $ANTHROPIC_API_KEY is not set" in result.output
    # A key pasted with its line break would split the upstream request's headers.
    result = CliRunner().invoke(cli, ["serve", "--config", str(config), "--port", "0"],
                                env={"ANTHROPIC_API_KEY": "sk-ant-secret\nx-evil: 1"})
    assert result.exit_code == 1
    assert "$ANTHROPIC_API_KEY holds characters an API key cannot have" in result.output
    assert "sk-ant-secret" not in result.output


def test_router_keys_new_prints_a_key_once_and_the_line_that_admits_it(
        fake: FakeUpstream, start_proxy: Callable[..., str], managed_env: None) -> None:
    printed = CliRunner().invoke(cli, ["keys", "new", "--team", "platform", "--name", "ci"])
    assert printed.exit_code == 0, printed.output
    key = re.search(r"sk-router-\S+", printed.output)
    assert key is not None
    line = printed.output.strip().splitlines()[-1].strip()
    assert line == f'- {{name: "ci", team: "platform", sha256: "{key_hash(key.group())}"}}'
    text = budget_config(fake.url, keys=f"keys:\n  mode: managed\n  issued:\n    {line}\n")
    url = start(start_proxy, text)
    assert post(url, body(), {"x-api-key": key.group()})[0] == 200
    assert post(url, body(), {"x-api-key": key.group() + "x"})[0] == 401
    as_json = json.loads(CliRunner().invoke(cli, ["keys", "new", "--admin", "--json"]).output)
    assert key_hash(as_json["key"]) == as_json["sha256"] and as_json["admin"] is True
    assert CliRunner().invoke(cli, ["keys", "new"]).exit_code == 1


def test_the_budgets_endpoint_is_for_admin_keys_only(
        fake: FakeUpstream, start_proxy: Callable[..., str]) -> None:
    text = budget_config(fake.url, keys=f"""keys:
  admin: ["{key_hash(ADMIN)}"]
  issued:
{issued(("alice", "platform", ALICE, ", limits: {usd_per_week: 7}"))}""", teams="""teams:
  platform: {limits: {usd_per_day: 2.5, usd_per_month: 40, requests_per_minute: 100}}
""")
    url = start(start_proxy, text)
    assert get(url, "")[0] == 401
    status, data = get(url, ALICE)
    assert status == 403 and json.loads(data)["error"]["type"] == "permission_error"
    fake.script(Reply(usage={"input_tokens": 100, "output_tokens": 100}))  # $0.003 on Opus
    assert post(url, body(), {"x-api-key": ALICE})[0] == 200
    report = admin_report(url)
    rows = {(r["scope"], r["name"], r["window"]): r for r in report["budgets"]}
    assert {k: r["spent_micro_usd"] for k, r in rows.items()} == dict.fromkeys(rows, 3000)
    assert set(rows) == {("team", "platform", "day"), ("team", "platform", "month"),
                         ("key", "alice", "week")}
    assert rows["team", "platform", "day"]["limit_usd"] == 2.5
    assert rows["team", "platform", "day"]["resets_at"] == periods_at(
        time.time(), UTC)["day"].resets_at()
    assert report["keys"] == [{"name": "alice", "team": "platform", "revoked": False}]
    assert report["rate_limits"] == [{"scope": "team", "name": "platform",
                                      "requests_per_minute": 100}]
    assert ALICE not in data.decode() and key_hash(ALICE) not in json.dumps(report)


# ------------------------------------------------------------------ budgets


def test_a_team_with_any_name_gets_valid_headers_and_messages(
        fake: FakeUpstream, start_proxy: Callable[..., str]) -> None:
    keys = "keys:\n  issued:\n" + issued(("zoë", "équipe ☕", API_KEY))
    text = budget_config(fake.url, keys=keys,
                         teams="teams:\n  équipe ☕: {limits: {usd_per_day: 0.0011}}\n")
    url = start(start_proxy, text)
    fake.script(Reply(usage={"input_tokens": 0, "output_tokens": 40}),  # $0.001 on Opus
                Reply(usage={"input_tokens": 0, "output_tokens": 1000}))
    assert post(url, body())[0] == 200
    status, headers, _ = post(url, body())
    assert status == 200
    assert headers["x-router-budget-warning"].startswith("team '?quipe ?' has spent 0.0010 of")
    status, headers, data = post(url, body())
    assert status == 429 and "équipe ☕" in json.loads(data)["error"]["message"]


def test_a_team_budget_warns_then_downgrades_then_refuses(
        fake: FakeUpstream, start_proxy: Callable[..., str]) -> None:
    # Opus costs $0.25 for 10,000 output tokens, Haiku $0.05: against $1.00 a day.
    text = budget_config(fake.url, budgets="""budgets:
  warn_at: 0.5
  downgrade_at: 0.7
  downgrade_to: haiku
""", keys=f"keys:\n  admin: [\"{key_hash(ADMIN)}\"]\n  issued:\n"
          f"{issued(('alice', 'platform', API_KEY))}",
        teams="teams:\n  platform: {limits: {usd_per_day: 1}}\n")
    url = start(start_proxy, text)
    client = anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=0)
    seen = []
    for _ in range(12):
        fake.script(Reply(usage={"input_tokens": 0, "output_tokens": 10_000}))
        try:
            raw = client.messages.with_raw_response.create(
                model="claude-opus-4-7", max_tokens=16_000, messages=PROMPT)
        except anthropic.RateLimitError as err:
            refusal = err
            break
        headers = raw.headers
        seen.append((headers["x-router-model"], headers["x-router-rule"],
                     "x-router-budget-warning" in headers))
    assert seen == [
        ("claude-opus-4-7", "default", False),   # 0%
        ("claude-opus-4-7", "default", False),   # 25%
        ("claude-opus-4-7", "default", True),    # 50%: warned
        ("claude-haiku-4-5", "budget", True),    # 75%: capped at haiku
        ("claude-haiku-4-5", "budget", True),    # 80%
        ("claude-haiku-4-5", "budget", True),    # 85%
        ("claude-haiku-4-5", "budget", True),    # 90%
        ("claude-haiku-4-5", "budget", True),    # 95%
    ]
    resets = periods_at(time.time(), UTC)["day"]
    assert refusal.status_code == 429
    assert isinstance(refusal.body, dict)
    assert refusal.body["error"] == {"type": "rate_limit_error", "message": (
        "team 'platform' has spent 1.00 of its daily budget of 1.00 USD; it resets at "
        f"{resets.resets_at()}")}
    wait = int(refusal.response.headers["retry-after"])
    assert abs(wait - (resets.end_ts - time.time())) < 5
    assert refusal.response.headers["x-should-retry"] == "false"
    assert spent(url, "team", "platform") == 1_000_000
    samples = scrape(url)
    assert total(samples, "router_budget_actions_total", team="platform",
                 action="downgraded") == 5
    assert total(samples, "router_budget_actions_total", team="platform", action="refused") == 1
    assert total(samples, "router_budget_spent_usd", scope="team") == 1.0
    assert total(samples, "router_budget_remaining_usd", scope="team") == 0.0
    assert total(samples, "router_cost_usd_total", team="platform") == pytest.approx(1.0)
    assert total(samples, "router_requests_total", rule="budget") == 5


TOOLS = [{"name": "Bash", "description": "Run a shell command.",
          "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}]


def test_a_downgrade_leaves_a_running_tool_loop_on_its_model(
        fake: FakeUpstream, start_proxy: Callable[..., str]) -> None:
    text = budget_config(fake.url, keys=f"keys:\n  issued:\n"
                                        f"{issued(('alice', 'platform', API_KEY))}",
                         teams="teams:\n  platform: {limits: {usd_per_day: 1}}\n")
    url = start(start_proxy, text)
    turn = [{"role": "user", "content": "list the files [[reply:tool=Bash]]"}]
    request = {"model": "claude-sonnet-4-6", "max_tokens": 1024, "tools": TOOLS}
    # The first turn costs $0.93: the budget is past downgrade_at (0.9) when the result comes.
    fake.script(Reply(usage={"input_tokens": 0, "output_tokens": 62_000}))
    status, headers, data = post(url, json.dumps({**request, "messages": turn}).encode())
    assert status == 200 and headers["x-router-model"] == "claude-sonnet-4-6"
    answer = json.loads(data)
    call = next(b for b in answer["content"] if b["type"] == "tool_use")
    looped = [*turn, {"role": "assistant", "content": answer["content"]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                            "content": "README.md"}]}]
    status, headers, data = post(url, json.dumps({**request, "messages": looped}).encode())
    assert status == 200
    assert (headers["x-router-model"], headers["x-router-conversation"]) == (
        "claude-sonnet-4-6", "tool-loop")
    assert "x-router-budget-warning" in headers
    # The loop is over: the next user turn is capped.
    after = [*looped, {"role": "assistant", "content": json.loads(data)["content"]},
             {"role": "user", "content": "thanks, now summarise"}]
    status, headers, _ = post(url, json.dumps({**request, "tools": [],
                                                "messages": after}).encode())
    assert status == 200
    assert (headers["x-router-model"], headers["x-router-rule"]) == ("claude-haiku-4-5",
                                                                     "budget")


def test_rate_limits_answer_429_with_retry_after_and_give_back_unused_output(
        fake: FakeUpstream, start_proxy: Callable[..., str]) -> None:
    text = budget_config(fake.url, keys="keys:\n  issued:\n" + issued(
        ("alice", "platform", API_KEY,
         ", limits: {requests_per_minute: 3, output_tokens_per_minute: 1000}")))
    url = start(start_proxy, text)
    # 600 output tokens reserved, 10 used: the rest comes back, so a second 600 fits.
    fake.script(Reply(usage={"output_tokens": 10}), Reply(usage={"output_tokens": 10}))
    status, headers, _ = post(url, body(max_tokens=600))
    assert status == 200
    assert headers["x-router-ratelimit-requests-limit"] == "3"
    assert headers["x-router-ratelimit-requests-remaining"] == "2"
    assert headers["x-router-ratelimit-output-tokens-limit"] == "1000"
    assert int(headers["x-router-ratelimit-output-tokens-remaining"]) in range(390, 401)
    reset = datetime.strptime(headers["x-router-ratelimit-requests-reset"],
                              "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert 0 <= reset.timestamp() - time.time() <= 21
    assert post(url, body(max_tokens=600))[0] == 200
    # A third at 600 would not fit, had the second not given back what it did not use.
    status, headers, _ = post(url, body(max_tokens=600))
    assert status == 200 and headers["x-router-ratelimit-requests-remaining"] == "0"
    status, headers, data = post(url, body())
    assert status == 429
    error = json.loads(data)["error"]
    assert error["type"] == "rate_limit_error"
    assert error["message"].startswith(
        "key 'alice' is over its rate limit of 3 requests per minute; retry in ")
    assert 1 <= int(headers["retry-after"]) <= 20
    assert headers["x-router-ratelimit-requests-remaining"] == "0"
    assert headers["x-should-retry"] == "true"
    assert len(fake.received) == 3


def test_passthrough_callers_each_get_the_callers_limits(
        fake: FakeUpstream, start_proxy: Callable[..., str]) -> None:
    text = budget_config(fake.url, budgets="budgets:\n  callers: {requests_per_minute: 1}\n")
    url = start(start_proxy, text)
    for key in ("sk-ant-one", "sk-ant-two"):
        assert post(url, body(), {"x-api-key": key})[0] == 200
        assert fake.received[-1].header("x-api-key") == key
    status, _, data = post(url, body(), {"x-api-key": "sk-ant-one"})
    assert status == 429
    message = json.loads(data)["error"]["message"]
    assert message.startswith("this API key (caller ") and "sk-ant-one" not in message


# ------------------------------------------------------------------ exact spend

# USD per million tokens, from router.yaml's pricing (checked 2026-11-22), typed out by hand.
RATES = {
    "claude-haiku-4-5": {"input": "1.00", "output": "5.00", "w5m": "1.25", "w1h": "2.00",
                         "read": "0.10"},
    "claude-sonnet-4-6": {"input": "3.00", "output": "15.00", "w5m": "3.75", "w1h": "6.00",
                          "read": "0.30"},
    "claude-opus-4-7": {"input": "5.00", "output": "25.00", "w5m": "6.25", "w1h": "10.00",
                        "read": "0.50"},
}


def hand_priced(model: str, usage: dict[str, Any]) -> int:
    """Micro-dollars of one billed usage, each token at its own rate, rounded half to even."""
    rate = {k: Decimal(v) for k, v in RATES[model].items()}
    split = usage.get("cache_creation") or {}
    w1h = split.get("ephemeral_1h_input_tokens") or 0
    w5m = (usage.get("cache_creation_input_tokens") or 0) - w1h
    micro = (rate["input"] * (usage.get("input_tokens") or 0)
             + rate["output"] * (usage.get("output_tokens") or 0)
             + rate["w5m"] * w5m + rate["w1h"] * w1h
             + rate["read"] * (usage.get("cache_read_input_tokens") or 0))
    return int(micro.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def test_the_budget_records_exactly_the_hand_computed_bill_of_a_mixed_workload(
        fake: FakeUpstream, start_proxy: Callable[..., str]) -> None:
    text = budget_config(fake.url, keys=f"""keys:
  admin: ["{key_hash(ADMIN)}"]
  issued:
{issued(("alice", "platform", API_KEY))}""",
                         teams="teams:\n  platform: {limits: {usd_per_month: 1000}}\n")
    text = re.sub(r"retry: \{[^}]*\}", "retry: {attempts: 2, base_delay: 0.01, max_delay: 0.05}",
                  text, count=1)
    url = start(start_proxy, text)
    bill: list[int] = []

    def send(model: str, behaviours: list[Any], stream: bool = False,
             expect: int = 200) -> dict[str, str]:
        before = len(fake.billed)
        fake.script(*behaviours)
        status, headers, _ = post(url, body(model, 512, stream=stream))
        assert status == expect
        answered = headers.get("x-router-model", model)
        bill.extend(hand_priced(answered, usage) for usage in fake.billed[before:])
        return headers

    # Prompt-cache writes at both TTLs, and reads.
    send("claude-sonnet-4-6", [Reply(usage={
        "input_tokens": 1234, "output_tokens": 321, "cache_creation_input_tokens": 4000,
        "cache_creation": {"ephemeral_5m_input_tokens": 3000, "ephemeral_1h_input_tokens": 1000},
        "cache_read_input_tokens": 0})])
    send("claude-opus-4-7", [Reply(usage={
        "input_tokens": 7, "output_tokens": 77, "cache_read_input_tokens": 12_345,
        "cache_creation_input_tokens": 333,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 333}})],
         stream=True)
    # A write the API did not split by TTL: billed at the 5-minute rate.
    send("claude-haiku-4-5", [Reply(usage={"input_tokens": 3, "output_tokens": 9,
                                           "cache_creation_input_tokens": 501,
                                           "cache_creation": None})])
    # A stream cut after its first events: what the upstream reported so far is billed.
    send("claude-opus-4-7", [Drop(after_events=3)], stream=True)
    # A retry (an overloaded answer costs nothing), and a fallback from Haiku to Sonnet.
    send("claude-opus-4-7", [Fail(529, "overloaded_error"), Reply(usage={"output_tokens": 55})])
    headers = send("claude-haiku-4-5", [Fail(529, "overloaded_error"),
                                        Fail(529, "overloaded_error"),
                                        Reply(usage={"input_tokens": 99, "output_tokens": 1})])
    assert headers["x-router-fallback"] == "claude-haiku-4-5->claude-sonnet-4-6"
    # An error answer, relayed: nothing billed, the reservation given back.
    send("claude-opus-4-7", [Fail(400, "invalid_request_error")], expect=400)
    assert len(bill) == 6 and all(bill)
    expected = sum(bill)
    assert wait_until(lambda: spent(url, "team", "platform", "month") == expected), (
        spent(url, "team", "platform", "month"), expected)


def wait_until(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    """Settling runs after the answer's last byte: give it a moment."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ------------------------------------------------------------------ config and windows


@pytest.mark.parametrize(("yaml", "problem"), [
    ("keys:\n  issued:\n    - {name: a, team: t, sha256: abc}\n", "sha256 must be 64"),
    (f"keys:\n  issued:\n    - {{name: a, team: t, sha256: '{'0' * 64}'}}\n"
     f"    - {{name: a, team: u, sha256: '{'1' * 64}'}}\n", "another key has this name"),
    ("keys:\n  admin: [nothex]\n", "keys.admin[0]: must be 64"),
    ("budgets:\n  timezone: Mars/Olympus\n", "unknown time zone 'Mars/Olympus'"),
    ("budgets:\n  warn_at: 0\n", "budgets.warn_at: must be above 0"),
    ("teams:\n  t: {limits: {usd_per_day: -1}}\n", "teams.t.limits.usd_per_day: must be"),
    ("keys:\n  mode: open\n", "keys.mode"),
    ("teams:\n  t: {limits: {usd_per_year: 1}}\n", "usd_per_year"),
    ("keys:\n  file: no-such-keys.yaml\n", "keys.file: cannot read"),
])
def test_bad_keys_and_budgets_are_refused_at_load(yaml: str, problem: str) -> None:
    name = yaml.split(":")[0]
    text = section(config_text("http://127.0.0.1:9"), name, yaml)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "/nowhere/router.yaml")
    assert problem in str(caught.value)


def test_a_keys_file_adds_keys_and_its_edits_reload(
        fake: FakeUpstream, start_proxy: Callable[..., str], tmp_path: Path,
        managed_env: None) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(issued(("alice", "platform", ALICE)).replace("    - ", "- "))
    config = tmp_path / "router.yaml"
    text = budget_config(fake.url, keys="keys:\n  mode: managed\n  file: keys.yaml\n")
    text = text.replace("reload_poll_seconds: 1", "reload_poll_seconds: 0.05")
    config.write_text(text)
    url = start_proxy(policy=parse_policy(text, str(config)), config_path=str(config))
    assert post(url, body(), {"x-api-key": ALICE})[0] == 200
    assert post(url, body(), {"x-api-key": BOB})[0] == 401
    keys.write_text(keys.read_text() + issued(("bob", "research", BOB)).replace("    - ", "- "))
    assert wait_until(lambda: post(url, body(), {"x-api-key": BOB})[0] == 200)


def test_windows_begin_at_midnight_on_monday_and_on_the_first_in_their_zone() -> None:
    # 2026-03-29 is the Sunday Paris moves to summer time: that day lasts 23 hours.
    paris = zone_of("Europe/Paris")
    at = datetime(2026, 3, 29, 12, tzinfo=paris).timestamp()
    periods = periods_at(at, paris)
    assert periods["day"].label == "2026-03-29"
    assert periods["day"].end_ts - periods["day"].start.timestamp() == 23 * 3600
    assert periods["week"].label == "2026-03-23"  # the Monday before
    assert periods["week"].resets_at() == "2026-03-29T22:00:00Z"
    assert periods["month"].resets_at() == "2026-03-31T22:00:00Z"
    december = periods_at(datetime(2026, 12, 31, 23, 59, tzinfo=UTC).timestamp(), UTC)
    assert december["month"].resets_at() == "2027-01-01T00:00:00Z"
    assert december["day"].label == "2026-12-31"



# ------------------------------------------------------------------ the store away


def test_while_redis_hangs_a_worker_counts_on_from_the_spend_it_saw_and_replays_it_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """Redis stops answering (SIGSTOP) with a charge in flight, which it runs when it wakes:
    meanwhile the worker counts in memory from the last spend it saw, fails closed if told to,
    and once Redis answers again every charge it made counts exactly once."""
    now = 1_800_000_000_000_000
    caplog.set_level(logging.WARNING, logger="router.budgets")
    with running_redis() as redis:
        config = StateConfig(backend="redis", url=redis.url, redis_timeout=0.3,
                             redis_retry_seconds=0.2)
        assert redis.process is not None

        async def main() -> None:
            async with opened_store(config) as store:
                fallbacks: list[str] = []
                counters = Counters(store, "open", lambda backend, _: fallbacks.append(backend))
                closed = Counters(store, "closed")

                def reserve(amount: int, once: str, who: Counters = counters) -> Any:
                    return who.charge([Charge("spend", amount, 3600, limit=100)], now, once,
                                      may_refuse=True)

                assert (await reserve(30, "a")).values == [30]
                with redis.client() as client:
                    client.incrby("spend", 40)  # another worker: this one does not know
                os.kill(redis.process.pid, signal.SIGSTOP)
                try:
                    hung = await reserve(30, "b")  # times out; Redis runs it when it wakes
                    assert (hung.applied, hung.values, hung.local) == (True, [60], True)
                    assert (await reserve(30, "c")).values == [90]
                    assert (await reserve(30, "d")).values == [120]
                    refused = await reserve(1, "e")  # 120 >= 100 from what this worker saw
                    assert (refused.applied, refused.values) == (False, [120])
                    with pytest.raises(Unavailable):
                        await reserve(1, "f", closed)
                    settled = await closed.charge([Charge("spend", -7, 3600)], now, "g",
                                                  may_refuse=False)
                    assert settled.local and closed.backlog == 1
                    assert (await counters.values(["spend"])) == ([120], True)
                finally:
                    os.kill(redis.process.pid, signal.SIGCONT)
                await asyncio.sleep(0.3)
                # 70 in Redis, plus "b" run on waking, plus 8 concurrent charges of 1 (those
                # made while one of them probes Redis are made in memory, to replay too); "b"
                # again, "c" and "d" replayed once whichever tasks find the backlog: "b"'s
                # replay changes nothing.
                await asyncio.gather(*(
                    counters.charge([Charge("spend", 1, 3600)], now, f"h{i}", may_refuse=False)
                    for i in range(8)))
                for _ in range(20):
                    if not counters.backlog:
                        break
                    await counters.charge([], now, "drain", may_refuse=False)
                    await asyncio.sleep(0.05)
                assert counters.backlog == 0
                with redis.client() as client:
                    assert client.get("spend") == b"168"
                    await closed.charge([Charge("spend", 0, 3600)], now, "i", may_refuse=False)
                    assert client.get("spend") == b"161" and closed.backlog == 0
                assert await counters.values(["spend"]) == ([161], False)
                assert fallbacks and set(fallbacks) == {"redis"}

        asyncio.run(main())
    assert "budgets_store_unavailable" in caplog.text
    assert "budgets_store_recovered" in caplog.text
