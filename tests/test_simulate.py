"""``router simulate`` and the shadow policy, on traffic recorded by the real proxy.

A day's mix of traffic goes through the proxy into its ledger; replayed with the same config it
costs exactly what it cost. A candidate that sends one rule to Haiku moves the requests and
saves the amounts worked out by hand below, and a candidate that moves a cached conversation
mid-way pays for the cache it rewrites; the shadow policy, run live on the same traffic, counts
what the simulation says.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import pytest
from click.testing import CliRunner

from router.accounting.cost import Tokens
from router.accounting.entry import ConversationSeen, Entry
from router.accounting.ledger_files import LedgerFiles, Reader
from router.accounting.simulate import Report, simulate, simulate_ledger
from router.cli import cli
from router.config import LedgerConfig
from router.fake import Fail, FakeUpstream, Reply
from router.routing.rules import Policy, parse_policy
from tests.conftest import API_KEY, config_text, make_features, running_proxy, scrape, total
from tests.test_raw_http import post

FAST = [
    (r"flush_seconds: 1\b", "flush_seconds: 0.05"),
    (r"retry: \{[^}]*\}", "retry: {attempts: 2, base_delay: 0.01, max_delay: 0.02}"),
]
"""Records written every 50 ms; quick retries."""


def config_file(directory: Path, name: str, upstream: str, policy_yaml: str | None = None,
                extra: str = "") -> Path:
    """Write the default config (its routing policy replaced by ``policy_yaml``) as ``name``."""
    text = config_text(upstream, policy_yaml)
    for pattern, replacement in FAST:
        text, count = re.subn(pattern, replacement, text, count=1)
        assert count == 1, pattern
    path = directory / name
    path.write_text(text + extra)
    return path


def load(path: Path) -> Policy:
    return parse_policy(path.read_text(), str(path))


def recorded(state_dir: Path) -> list[Entry]:
    return list(Reader(state_dir / "ledger.db").entries())


def wait_written(url: str, count: int) -> dict[str, float]:
    """Scrape /metrics until the ledger has written ``count`` records; return the samples."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(url)
        if total(samples, "router_ledger_records_total", result="written") >= count:
            return samples
        assert time.monotonic() < deadline, "the ledger did not write every record"
        time.sleep(0.05)


# ------------------------------------------------------------------ a recorded day

CACHED_SYSTEM = [{"type": "text", "cache_control": {"type": "ephemeral"},
                  "text": "You are the support assistant of a bicycle shop. Answer from the "
                          "catalogue below; say when you do not know. " * 60}]
TOOLS: list[Any] = [{"name": "Read", "description": "Read a file.",
                     "input_schema": {"type": "object", "properties": {
                         "path": {"type": "string"}}}}]
ASKS = [
    ("claude-sonnet-4-6", "What is the capital of {}? One word."),
    ("claude-opus-4-7", "Extract the email address from: 'write to {}@example.com'. JSON."),
    ("claude-sonnet-4-6", "Write a Python function that parses {} timestamps, with tests."),
    ("claude-haiku-4-5", "Prove that there is no largest prime, then generalise the argument "
                         "to primes of the form 4k+3 in {}; analyse step by step why it fails "
                         "for 4k+1 and compare the trade-offs of three proof strategies."),
]
PLACES = ["France", "Peru", "Japan", "Kenya", "Chile", "Nepal"]


def a_day(url: str, fake: FakeUpstream) -> int:
    """A day's mix through the proxy: one-line lookups, coding, proofs, cached chats over a
    long system prompt, a tool loop, streams, a fallback, failures, count_tokens and the model
    list. Returns how many requests were sent."""
    client = anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=0)
    sent = 0
    for i, place in enumerate(PLACES):
        for model, ask in ASKS:
            body: dict[str, Any] = {"model": model, "max_tokens": 400,
                                    "messages": [{"role": "user", "content": ask.format(place)}]}
            if i % 2:
                with client.messages.stream(**body) as stream:
                    stream.get_final_message()
            else:
                client.messages.create(**body)
            sent += 1
    for chat in range(3):  # cached conversations: the fake's prompt cache reads and writes
        messages: list[Any] = []
        for turn in range(4):
            messages.append({"role": "user", "content": [{
                "type": "text", "text": f"Chat {chat}, question {turn}: is the bike in stock?",
                "cache_control": {"type": "ephemeral"}}]})
            answer = client.messages.create(model="claude-sonnet-4-6", max_tokens=300,
                                            system=CACHED_SYSTEM, messages=messages)
            messages[-1]["content"][0].pop("cache_control")
            messages.append({"role": "assistant", "content": answer.content[0].text})
            sent += 1
    # A tool loop: the answer calls Read, the next turn carries its result.
    loop: list[Any] = [{"role": "user", "content": "Fix the failing test. [[reply:tool=Read]]"}]
    answer = client.messages.create(model="claude-opus-4-7", max_tokens=1000, tools=TOOLS,
                                    messages=loop)
    call = next(b for b in answer.content if b.type == "tool_use")
    loop += [{"role": "assistant", "content": [b.model_dump() for b in answer.content]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                           "content": "def test_x(): assert 1 == 2"}]}]
    client.messages.create(model="claude-opus-4-7", max_tokens=1000, tools=TOOLS,
                           messages=loop)
    sent += 2
    # Haiku overloaded twice: the request falls back to Sonnet.
    fake.script(Fail(529, "overloaded_error"), Fail(529, "overloaded_error"))
    client.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=[
        {"role": "user", "content": "What is the capital of Italy? One word."}])
    sent += 1
    # Haiku refuses the request it was routed: it goes to the model asked for.
    fake.script(Fail(400, "invalid_request_error"))
    client.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=[
        {"role": "user", "content": "Translate 'bonjour' to English."}])
    # A final failure: the client gets the error, nothing is billed.
    fake.script(Fail(529, "overloaded_error", headers={"x-should-retry": "false"}))
    with pytest.raises(anthropic.APIStatusError):
        client.messages.create(model="claude-opus-4-7", max_tokens=50, messages=[
            {"role": "user", "content": "Design the rollout of a new billing service."}])
    sent += 2
    client.messages.count_tokens(model="claude-sonnet-4-6", messages=[
        {"role": "user", "content": "How many tokens is this?"}])
    client.models.list()
    assert post(url, b'{"model": ')[0] == 400
    client.messages.create(model="claude-fable-5-2", max_tokens=20, messages=[
        {"role": "user", "content": "An unpriced model."}])
    client.close()
    return sent + 4


def test_a_recorded_day_replayed_with_its_own_config_costs_exactly_what_it_cost(
        fake: FakeUpstream, tmp_path: Path) -> None:
    path = config_file(tmp_path, "router.yaml", fake.url)
    with running_proxy(load(path)) as url:
        sent = a_day(url, fake)
    entries = recorded(tmp_path / "state")
    assert len(entries) == sent
    routed = [e for e in entries if e.rule is not None]
    assert {e.path for e in entries} == {"/v1/messages", "/v1/messages/count_tokens",
                                         "/v1/models"}
    assert any(e.usage.cache_read for e in routed) and any(e.usage.cache_write_5m
                                                            for e in routed)
    assert any(e.fallbacks for e in routed) and any(e.action == "stay" for e in routed)
    assert {e.tier for e in routed} >= {"haiku", "sonnet", "opus"}
    spent = sum((e.cost for e in entries if e.cost is not None), Decimal(0))
    assert spent > 0

    report = simulate(Reader(tmp_path / "state" / "ledger.db").rows(), load(path))
    assert report.total.before == spent
    assert report.total.after == spent  # to the last decimal digit
    assert report.total.requests == len(routed)
    assert report.not_routed == len(entries) - len(routed)
    assert report.moves == Counter() and report.total.unpriced == 0
    assert {rule: t.requests for rule, t in report.by_rule.items()} == Counter(
        e.rule for e in routed)
    assert report.mix_before == report.mix_after
    # Split across processes by conversation, the replay gives the same report.
    parallel = simulate_ledger(tmp_path / "state" / "ledger.db", load(path), workers=2)
    assert parallel.as_dict() == report.as_dict()


LATER_TURNS_TO_OPUS = """\
  - name: later-turns-to-opus
    when: {user_turns: {gte: 3}}
    tier: opus
"""


def test_the_simulated_cost_of_a_candidate_is_what_running_it_costs(
        fake: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The day is recorded under the default rules; a candidate moving the cached chats to
    Opus from their third turn is simulated; then the candidate itself serves the same day (the
    fake's prompt cache as cold as before). The chats share a long system prompt: the first to
    move writes it on Opus, the later ones read it."""
    live = config_file(tmp_path, "router.yaml", fake.url)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(live.read_text().replace("\nrules:\n", "\nrules:\n"
                                                  + LATER_TURNS_TO_OPUS, 1))
    with running_proxy(load(live)) as url:
        a_day(url, fake)
    report = simulate(Reader(tmp_path / "state" / "ledger.db").rows(), load(candidate))
    assert report.moves[("haiku", "opus")] == 6

    fake.clear()
    monkeypatch.setenv("ROUTER_STATE_DIR", str(tmp_path / "state2"))
    with running_proxy(load(candidate)) as url:
        a_day(url, fake)
    ran = recorded(tmp_path / "state2")
    actual = sum((e.cost for e in ran if e.cost is not None), Decimal(0))
    assert Counter(e.tier or "other" for e in ran if e.rule) == report.mix_after - Counter()
    assert abs(report.total.after - actual) / actual < Decimal("0.005"), (report.total.after,
                                                                           actual)


# ------------------------------------------------------------------ hand-computed moves

LIVE = """\
default: sonnet
rules:
  - name: short-opus
    when: {requested_tier: opus, max_tokens: {lte: 300}}
    pin: true
  - name: long-opus
    when: {requested_tier: opus}
    tier: opus
"""
TO_HAIKU = LIVE.replace("    pin: true\n", "    tier: haiku\n")
"""Candidate A: the rule ``short-opus`` sends its requests to Haiku."""
LATER_TURNS_UP = LIVE.replace("rules:\n", """rules:
  - name: later-turns-to-opus
    when: {user_turns: {gte: 2}}
    tier: opus
""")
"""Candidate B: every turn after a conversation's first goes to Opus."""

CHAT_USAGE = [  # a cached Sonnet conversation, as the API reported it
    {"input_tokens": 100, "output_tokens": 100, "cache_read_input_tokens": 0,
     "cache_creation_input_tokens": 2000},
    {"input_tokens": 100, "output_tokens": 100, "cache_read_input_tokens": 2000,
     "cache_creation_input_tokens": 300},
    {"input_tokens": 100, "output_tokens": 100, "cache_read_input_tokens": 2300,
     "cache_creation_input_tokens": 200},
]


def scripted_traffic(url: str, fake: FakeUpstream) -> int:
    """Four short Opus questions (1,000 in, 200 out each), two long ones (500 in, 100 out)
    and a three-turn cached Sonnet chat. Prompts are short: no token factor is learned."""
    asks = [(100, 1000, 200, f"Name colour number {i}.") for i in range(4)]
    asks += [(2000, 500, 100, f"Plan project {i}.") for i in range(2)]
    for max_tokens, tokens_in, tokens_out, text in asks:
        fake.script(Reply(usage={"input_tokens": tokens_in, "output_tokens": tokens_out,
                                 "cache_read_input_tokens": 0,
                                 "cache_creation_input_tokens": 0}))
        body = {"model": "claude-opus-4-7", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": text}]}
        assert post(url, json.dumps(body).encode())[0] == 200
    messages: list[Any] = []
    for turn, usage in enumerate(CHAT_USAGE):
        fake.script(Reply(text=f"answer {turn}", usage=usage))
        messages.append({"role": "user", "content": f"Chat question {turn}."})
        body = {"model": "claude-sonnet-4-6", "max_tokens": 500, "messages": messages}
        assert post(url, json.dumps(body).encode())[0] == 200
        messages.append({"role": "assistant", "content": f"answer {turn}"})
    return 9


def usd(text: str) -> Decimal:
    return Decimal(text)


def test_a_candidate_sending_one_rule_to_haiku_moves_and_saves_what_hand_arithmetic_says(
        fake: FakeUpstream, tmp_path: Path) -> None:
    config_file(tmp_path, "candidate.yaml", fake.url, TO_HAIKU)
    path = config_file(tmp_path, "router.yaml", fake.url, LIVE, extra="shadow: candidate.yaml\n")
    with running_proxy(load(path), str(path)) as url:
        sent = scripted_traffic(url, fake)
        samples = wait_written(url, sent)
    candidate = load(tmp_path / "candidate.yaml")
    report = simulate(Reader(tmp_path / "state" / "ledger.db").rows(), candidate)

    # By hand (USD per million tokens: Opus 5 in / 25 out, Haiku 1 / 5, Sonnet 3 / 15, cache
    # writes at 1.25x input, reads at 0.1x):
    #   short-opus, each: Opus 1000*5 + 200*25 = 10,000 µ$, Haiku 1000*1 + 200*5 = 2,000 µ$
    #   long-opus, each:  500*5 + 100*25 = 5,000 µ$, unchanged
    #   the chat on Sonnet: 100*3 + 100*15 + 2000*3.75 = 9,300; + 2000*0.3 + 300*3.75 = 3,525;
    #                       + 2300*0.3 + 200*3.75 = 3,240 µ$, unchanged
    short = report.by_rule["short-opus"]
    assert (short.requests, short.moved, short.down, short.down_far) == (4, 4, 4, 4)
    assert (short.before, short.after, short.saved) == (usd("0.04"), usd("0.008"), usd("0.032"))
    long = report.by_rule["long-opus"]
    assert (long.requests, long.moved, long.before, long.after) == (2, 0, usd("0.01"),
                                                                    usd("0.01"))
    chat = report.by_rule["default"]
    assert (chat.requests, chat.moved, chat.before) == (3, 0, usd("0.016065"))
    assert chat.after == chat.before
    assert report.moves == Counter({("opus", "haiku"): 4})
    assert (report.total.before, report.total.after) == (usd("0.066065"), usd("0.034065"))
    assert len(report.far) == 4 and {f["rule"] for f in report.far} == {"short-opus"}

    # The shadow policy ran the same candidate live, and counted the same.
    decisions = {(tier, rule): total(samples, "router_shadow_decisions_total", tier=tier,
                                     rule=rule)
                 for tier, rule in [("haiku", "short-opus"), ("opus", "long-opus"),
                                    ("sonnet", "default")]}
    assert decisions == {("haiku", "short-opus"): 4, ("opus", "long-opus"): 2,
                         ("sonnet", "default"): 3}
    assert total(samples, "router_shadow_decisions_total") == sent
    assert total(samples, "router_shadow_cost_usd_total") == pytest.approx(0.034065, abs=1e-12)
    assert total(samples, "router_cost_usd_total") == pytest.approx(0.066065, abs=1e-12)

    # Candidate B moves the chat to Opus from its second turn: that turn finds no cache there
    # and writes the whole prefix (2,300 at 6.25); the third reads it back.
    #   turn 2 on Opus: 100*5 + 100*25 + 2300*6.25 = 17,375 µ$ (recorded 3,525)
    #   turn 3 on Opus: 100*5 + 100*25 + 2300*0.5 + 200*6.25 = 5,400 µ$ (recorded 3,240)
    later = simulate(Reader(tmp_path / "state" / "ledger.db").rows(),
                     load(config_file(tmp_path, "b.yaml", fake.url, LATER_TURNS_UP)))
    up = later.by_rule["later-turns-to-opus"]
    assert (up.requests, up.up, up.down) == (2, 2, 0)
    assert (up.before, up.after) == (usd("0.006765"), usd("0.022775"))
    assert later.moves == Counter({("sonnet", "opus"): 2})


def test_requests_a_budget_capped_replay_capped(fake: FakeUpstream, tmp_path: Path) -> None:
    """A budget past its downgrade share caps every request at Haiku (rule ``budget``): the
    replay meets the same cap, so the same config still costs exactly what was recorded."""
    path = config_file(tmp_path, "router.yaml", fake.url, LIVE)
    text = path.read_text().replace("  warn_at: 0.8\n", "  warn_at: 0.000001\n").replace(
        "  downgrade_at: 0.9\n", "  downgrade_at: 0.000001\n").replace(
        "  # callers: {usd_per_day: 20, requests_per_minute: 60}",
        "  callers: {usd_per_day: 100}")
    path.write_text(text)
    with running_proxy(load(path)) as url:
        sent = scripted_traffic(url, fake)
    entries = recorded(tmp_path / "state")
    capped = [e for e in entries if e.rule == "budget"]
    assert len(entries) == sent and len(capped) >= 4  # the first spent nothing before it
    assert {e.budget_cap for e in capped} == {"haiku"} and {e.tier for e in capped} == {"haiku"}
    report = simulate(Reader(tmp_path / "state" / "ledger.db").rows(), load(path))
    assert report.moves == Counter() and report.by_rule["budget"].requests == len(capped)
    assert report.total.after == report.total.before == sum(
        (e.cost for e in entries if e.cost is not None), Decimal(0))


def test_the_shadow_policy_is_reloaded_when_its_file_changes(fake: FakeUpstream,
                                                             tmp_path: Path) -> None:
    config_file(tmp_path, "candidate.yaml", fake.url, TO_HAIKU)
    path = config_file(tmp_path, "router.yaml", fake.url, LIVE,
                       extra="shadow: candidate.yaml\n")
    text = path.read_text().replace("reload_poll_seconds: 1", "reload_poll_seconds: 0.05")
    path.write_text(text)
    body = {"model": "claude-opus-4-7", "max_tokens": 100,
            "messages": [{"role": "user", "content": "Name a colour."}]}
    with running_proxy(load(path), str(path)) as url:
        assert post(url, json.dumps(body).encode())[0] == 200
        wait_written(url, 1)
        edited = (tmp_path / "candidate.yaml").read_text().replace(
            "name: short-opus\n    when: {requested_tier: opus, max_tokens: {lte: 300}}\n"
            "    tier: haiku", "name: short-opus\n    when: {requested_tier: opus, max_tokens: "
            "{lte: 300}}\n    tier: sonnet")
        (tmp_path / "candidate.yaml").write_text(edited)
        deadline = time.monotonic() + 10
        while total(scrape(url), "router_config_reloads_total", result="ok") < 1:
            assert time.monotonic() < deadline, "the edited candidate was not reloaded"
            time.sleep(0.05)
        assert post(url, json.dumps(body).encode())[0] == 200
        samples = wait_written(url, 2)
    assert total(samples, "router_shadow_decisions_total", tier="haiku", rule="short-opus") == 1
    assert total(samples, "router_shadow_decisions_total", tier="sonnet", rule="short-opus") == 1


# ------------------------------------------------------------------ the command


def test_router_simulate_prints_the_report_writes_html_and_json(
        fake: FakeUpstream, tmp_path: Path) -> None:
    candidate = config_file(tmp_path, "candidate.yaml", fake.url, TO_HAIKU)
    path = config_file(tmp_path, "router.yaml", fake.url, LIVE)
    with running_proxy(load(path)) as url:
        scripted_traffic(url, fake)
    ledger = str(tmp_path / "state" / "ledger.db")
    runner = CliRunner()
    page = tmp_path / "report.html"
    result = runner.invoke(cli, ["simulate", "--config", str(candidate), "--ledger", ledger,
                                 "--since", "1h", "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert re.search(r"short-opus\s+4\s+4\s+0\s+4\s+4\s+0\.0400\s+0\.0080\s+0\.0320\s+80\.0%",
                     result.output), result.output
    assert "opus -> haiku" in result.output
    assert "moved down more than one tier: 4" in result.output
    html = page.read_text()
    assert html.count("<svg") == 2 and "short-opus" in html and "$0.0320" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "fetches nothing"

    as_json = runner.invoke(cli, ["simulate", "--config", str(candidate), "--ledger", ledger,
                                  "--json"])
    data = json.loads(as_json.output)
    assert data["total"]["saved_usd"] == "0.032"
    assert data["by_rule"]["short-opus"]["down_more_than_one_tier"] == 4

    # The ledger comes from the live config when not named: ROUTER_CONFIG's state directory.
    env = {"ROUTER_CONFIG": str(path), "ROUTER_STATE_DIR": str(tmp_path / "state")}
    same = runner.invoke(cli, ["simulate", "--config", str(path), "--json"], env=env)
    assert json.loads(same.output)["total"]["saved_usd"] == "0"

    for args, message in [
        (["--ledger", str(tmp_path / "none.db")], "no ledger at"),
        (["--ledger", ledger, "--since", "yesterday"], "--since wants"),
    ]:
        failed = runner.invoke(cli, ["simulate", "--config", str(candidate), *args])
        assert failed.exit_code == 1 and message in failed.output, failed.output
        assert "Traceback" not in failed.output


def test_report_json_and_merge_agree(fake: FakeUpstream, tmp_path: Path) -> None:
    """Two halves merged give the report of the whole (what the parallel replay relies on)."""
    path = config_file(tmp_path, "router.yaml", fake.url, LIVE)
    with running_proxy(load(path)) as url:
        scripted_traffic(url, fake)
    rows = list(Reader(tmp_path / "state" / "ledger.db").rows())
    candidate = load(config_file(tmp_path, "c.yaml", fake.url, TO_HAIKU))
    whole = simulate(rows, candidate)
    halves = [simulate([r for r in rows if (r.conversation.id if r.conversation else "")
                        .endswith(tuple("02468ace")) == odd], candidate) for odd in (True, False)]
    merged = Report(candidate.loaded.source, candidate.loaded.sha256)
    for half in halves:
        merged.merge(half)
    assert merged.as_dict() == whole.as_dict()


def test_a_ledger_gives_the_same_report_on_any_number_of_cores(tmp_path: Path) -> None:
    """One caller, two conversations sharing a cached prefix, a candidate that moves one of
    them: the report does not depend on how many processes replay it (a report that changed
    with the machine could not be trusted with a budget)."""
    candidate = parse_policy(config_text("http://127.0.0.1:9", "default: requested\nrules:\n"
                                         "  - name: x-to-haiku\n    when: {app: x}\n"
                                         "    tier: haiku\n"))
    sonnet = candidate.config.tier_model("sonnet")
    start = time.time() - 100

    def entry(n: int, conversation: str, usage: Tokens, app: str) -> Entry:
        ts = start + 10 * n
        return Entry(ts=ts, request_id=f"req_{n}", path="/v1/messages", status=200,
                     caller="c1", requested_model=sonnet, rule="default", tier="sonnet",
                     model=sonnet, action="new", answered_by=sonnet, usage=usage,
                     features=make_features(input_tokens=2000, max_tokens=100, user_turns=1,
                                            messages=1, app=app, requested_model=sonnet),
                     conversation=ConversationSeen(id=conversation, caching=True, now=ts),
                     cost_usd="0.01", factors={})

    # "conv-a" and "conv-b" fall in different shares.
    entries = [entry(1, "conv-a", Tokens(input=10, output=50, cache_read=5000,
                                         cache_write_5m=15000), "x"),
               entry(2, "conv-b", Tokens(input=10, output=50, cache_read=18000,
                                         cache_write_5m=2000), "y")]
    files = LedgerFiles(tmp_path / "ledger.db", LedgerConfig())
    files.write(entries)
    files.close()
    reports = [simulate_ledger(tmp_path / "ledger.db", candidate, workers=n).as_dict()
               for n in (1, 2, 4)]
    assert reports[0]["total"]["moved"] == 1
    assert reports[0] == reports[1] == reports[2]
