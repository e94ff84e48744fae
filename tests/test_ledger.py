"""The request ledger: one content-free record per request, kept, rotated and exported."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sqlite3
import sys
import time
import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from router.accounting.cost import Tokens
from router.accounting.entry import ConversationSeen, Entry
from router.accounting.ledger import Ledger
from router.accounting.ledger_files import LedgerFiles, Reader, export
from router.accounting.metrics import Metrics
from router.cli import cli
from router.config import LedgerConfig
from router.config_file import ConfigError, parse_config
from router.fake import FakeUpstream, Reply
from router.routing.factor import FactorLearner
from router.routing.features import Features, feature_names
from router.routing.rules import load_policy, parse_policy
from tests.conftest import API_KEY, config_text, running_proxy, scrape, total
from tests.test_raw_http import post
from tests.test_simulate import config_file, load

SECRET = "ZEBRA-7731-CONFIDENTIAL"
"""Planted in every part of the requests that carries text."""


def secret_requests(url: str) -> int:
    """Requests whose system prompt, messages, tool descriptions, tool results and documents
    all carry :data:`SECRET`, plain and streamed, plus count_tokens."""
    tools = [{"name": "lookup", "description": f"Looks up {SECRET}",
              "input_schema": {"type": "object"}}]
    bodies: list[dict[str, Any]] = [
        {"model": "claude-sonnet-4-6", "max_tokens": 100, "system": f"Guard {SECRET}.",
         "messages": [{"role": "user", "content": f"Summarise {SECRET} in a line."}]},
        {"model": "claude-opus-4-7", "max_tokens": 100, "stream": True, "tools": tools,
         "messages": [
             {"role": "user", "content": [{"type": "text", "text": f"Find {SECRET}"}]},
             {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1",
                                                "name": "lookup", "input": {"q": SECRET}}]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                           "content": f"{SECRET} is in drawer 4"}]}]},
        {"model": "claude-haiku-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                            "data": f"Memo: {SECRET}"}},
            {"type": "text", "text": "What does the memo say?"}]}]},
    ]
    for body in bodies:
        status, _, _ = post(url, json.dumps(body).encode())
        assert status == 200
    status, _, _ = post(url, json.dumps(bodies[0] | {"max_tokens": None}).encode(),
                        path="/v1/messages/count_tokens")
    assert status == 200
    return len(bodies) + 1


def stored_bytes(directory: Path) -> bytes:
    """Every byte under ``directory`` (the ledger, its WAL, JSONL files)."""
    return b"".join(f.read_bytes() for f in sorted(directory.rglob("*")) if f.is_file())


@pytest.mark.parametrize("keep", [False, True])
def test_no_record_holds_prompt_text_unless_bodies_are_kept(fake: FakeUpstream, tmp_path: Path,
                                                            keep: bool) -> None:
    extra = f"ledger: {{jsonl_dir: {tmp_path / 'jsonl'}, store_bodies: {str(keep).lower()}}}\n"
    text = config_text(fake.url).replace("\nledger:\n", "\nformer_ledger:\n")
    path = tmp_path / "router.yaml"
    path.write_text(text[:text.index("\nformer_ledger:")] + "\n" + extra
                    + text[text.index("\n# A candidate config"):])
    with running_proxy(load(path)) as url:
        sent = secret_requests(url)
    entries = list(Reader(tmp_path / "state" / "ledger.db").entries())
    assert len(entries) == sent
    assert all(e.features is not None and e.caller for e in entries)
    lines = (tmp_path / "jsonl").glob("ledger-*.jsonl")
    shipped = [json.loads(line) for f in lines for line in f.read_text().splitlines()]
    assert sorted(e["request_id"] for e in shipped) == sorted(e.request_id for e in entries)
    exported = io.BytesIO()
    export(Reader(tmp_path / "state" / "ledger.db").entries(), "csv", exported)
    everything = stored_bytes(tmp_path / "state") + stored_bytes(tmp_path / "jsonl") \
        + exported.getvalue()
    assert API_KEY.encode() not in everything, "an API key in the ledger"
    if keep:
        assert SECRET.encode() in everything
        assert all(e.body and SECRET in e.body for e in entries)
    else:
        assert SECRET.encode() not in everything
        assert all(e.body is None for e in entries)


def test_a_record_says_what_was_asked_decided_used_and_cost(fake: FakeUpstream,
                                                            tmp_path: Path) -> None:
    path = config_file(tmp_path, "router.yaml", fake.url)
    fake.script(Reply(usage={"input_tokens": 1200, "output_tokens": 300,
                             "cache_read_input_tokens": 4000,
                             "cache_creation": {"ephemeral_5m_input_tokens": 500,
                                                "ephemeral_1h_input_tokens": 100},
                             "cache_creation_input_tokens": 600}))
    body = {"model": "claude-opus-4-7", "max_tokens": 50, "thinking": {"type": "disabled"},
            "messages": [{"role": "user", "content": "What is the capital of Peru? One word."}]}
    started = time.time()
    with running_proxy(load(path)) as url:
        status, headers, _ = post(url, json.dumps(body).encode(),
                                  {"anthropic-beta": "context-1m-2025-08-07", "x-app": "cli"})
    assert status == 200
    (entry,) = Reader(tmp_path / "state" / "ledger.db").entries()
    assert started - 1 < entry.ts <= time.time()
    assert entry.upstream_request_id == headers["request-id"]
    assert entry.request_id.startswith("req_")
    assert (entry.path, entry.status, entry.requested_model) == ("/v1/messages", 200,
                                                                 "claude-opus-4-7")
    # Simple work, but Haiku does not take the 1M-context beta: Sonnet serves it.
    assert (entry.rule, entry.tier, entry.model, entry.answered_by) == (
        "simple-to-haiku", "sonnet", "claude-sonnet-4-6", "claude-sonnet-4-6")
    assert entry.action == "new" and "context-1m" in (entry.reason or "")
    assert entry.features is not None and entry.features.complexity == "simple"
    assert entry.features.app == "cli"
    assert (entry.thinking, entry.betas) == ("disabled", ("context-1m-2025-08-07",))
    assert entry.usage == Tokens(1200, 300, 4000, 500, 100, 0)
    assert (entry.service_tier, entry.inference_geo) == ("standard", "global")
    # Sonnet: 1200*3 + 300*15 + 4000*0.3 + 500*3.75 + 100*6 = 11,775 µ$; on Opus (asked for):
    # 1200*5 + 300*25 + 4000*0.5 + 500*6.25 + 100*10 = 19,625 µ$.
    assert entry.cost_usd == "0.011775" and entry.counterfactual_usd == "0.019625"
    assert entry.conversation is not None and entry.conversation.state is None
    assert set(entry.factors) >= {"claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"}
    assert entry.latency_ms > 0 and entry.caller and entry.caller not in API_KEY


# ------------------------------------------------------------------ files


def entry(ts: float, n: int = 0, **fields: Any) -> Entry:
    return Entry(ts=ts, request_id=f"req_{n}", path="/v1/messages", status=200, **fields)


def test_rotation_deletes_records_past_their_age_then_the_oldest_beyond_the_size(
        tmp_path: Path) -> None:
    now = time.time()
    files = LedgerFiles(tmp_path / "ledger.db",
                        LedgerConfig(max_age_days=2, max_mb=0.5, jsonl_dir=str(tmp_path / "j")))
    (tmp_path / "j" / "ledger-2000-01-01.jsonl").write_text("{}\n")
    files.write([entry(now - 3 * 86400 - i, i) for i in range(100)] + [entry(now, 100)])
    # The first write rotated: the old records and the old day's file are gone.
    assert [e.request_id for e in Reader(tmp_path / "ledger.db").entries()] == ["req_100"]
    assert not (tmp_path / "j" / "ledger-2000-01-01.jsonl").exists()
    assert list((tmp_path / "j").glob("ledger-*.jsonl"))  # the recent days' files stay
    big = [entry(now - 1000 + i / 100, i, reason="x" * 500) for i in range(5000)]
    files.write(big)
    pages = files.db.execute("PRAGMA page_count").fetchone()[0]
    deleted = files.rotate(now)
    assert deleted > 0
    left = list(Reader(tmp_path / "ledger.db").entries())
    assert len(left) == 5001 - deleted
    assert min(e.ts for e in left) > min(e.ts for e in big)  # the oldest went first
    assert files._used_bytes() <= 0.5 * 1024 * 1024
    # The freed pages went back to the disk (auto_vacuum), not to a free list.
    assert files.db.execute("PRAGMA page_count").fetchone()[0] < pages / 2
    assert files.db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    files.close()


def test_records_written_under_another_feature_list_read_by_name(tmp_path: Path) -> None:
    """An older ledger (fewer features, another order) still replays: missing features read
    as their type's zero."""
    names = list(reversed(feature_names()[:-3]))  # the last three were unknown at the time
    db = LedgerFiles(tmp_path / "ledger.db", LedgerConfig()).db
    db.execute("INSERT INTO meta VALUES ('features:old', ?)", (json.dumps(names),))
    zero = {int: 0, float: 0.0, str: "", bool: False}
    hints = typing.get_type_hints(Features)
    values = {n: zero.get(hints[n], []) for n in names} | {
        "requested_model": "claude-opus-4-7", "tool_names": ["Read"], "stream": True}
    packed = msgspec.msgpack.encode([values[n] for n in names])
    blob = msgspec.msgpack.encode(entry(1.0))
    db.execute("INSERT INTO entries VALUES (1.0, 0, 'old', ?, ?)", (blob, packed))
    (read,) = Reader(tmp_path / "ledger.db").entries()
    (row,) = Reader(tmp_path / "ledger.db").rows()
    for features in (read.features, row.features):
        assert features is not None
        assert features.requested_model == "claude-opus-4-7"
        assert features.tool_names == ("Read",) and features.stream is True
        missing = feature_names()[-3:]
        assert [getattr(features, n) for n in missing] == [zero[hints[n]] for n in missing]


def test_export_writes_jsonl_csv_and_parquet(tmp_path: Path) -> None:
    now = time.time()
    files = LedgerFiles(tmp_path / "ledger.db", LedgerConfig())
    files.write([entry(now - 10 * 86400, 0, cost_usd="0.5"),
                 entry(now - 60, 1, rule="default", tier="sonnet", cost_usd="0.25",
                       usage=Tokens(input=10, output=5),
                       conversation=ConversationSeen(id="c1", tool_loop=True)),
                 entry(now - 30, 2, rule="simple", tier="haiku", retries=("overloaded_error",))])
    files.close()
    runner = CliRunner()
    ledger = str(tmp_path / "ledger.db")
    jsonl = runner.invoke(cli, ["ledger", "export", "--ledger", ledger, "--since", "7d"])
    assert jsonl.exit_code == 0, jsonl.output
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [r["request_id"] for r in rows] == ["req_1", "req_2"]
    assert rows[0]["usage"] == {"input": 10, "output": 5, "cache_read": 0, "cache_write_5m": 0,
                                "cache_write_1h": 0, "web_searches": 0}
    assert "2 records" in jsonl.stderr

    out = tmp_path / "week.csv"
    done = runner.invoke(cli, ["ledger", "export", "--ledger", ledger, "--since", "all",
                               "--format", "csv", "-o", str(out)])
    assert done.exit_code == 0, done.output
    table = list(csv.DictReader(out.open()))
    assert [r["request_id"] for r in table] == ["req_0", "req_1", "req_2"]
    assert table[1]["usage_input"] == "10" and table[1]["conversation_tool_loop"] == "True"
    assert table[2]["retries"] == "overloaded_error" and table[0]["cost_usd"] == "0.5"
    assert "feature_complexity" in table[0]

    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "week.parquet"
    done = runner.invoke(cli, ["ledger", "export", "--ledger", ledger, "--since", "2d",
                               "--format", "parquet", "-o", str(out)])
    assert done.exit_code == 0, done.output
    assert pq.read_table(out).column("request_id").to_pylist() == ["req_1", "req_2"]


def test_export_says_what_is_wrong_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    LedgerFiles(tmp_path / "ledger.db", LedgerConfig()).close()
    runner = CliRunner()
    ledger = str(tmp_path / "ledger.db")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    cases = [
        (["--ledger", ledger, "--format", "parquet"], "--format parquet needs --output"),
        (["--ledger", ledger, "--format", "parquet", "-o", str(tmp_path / "x")],
         "parquet needs pyarrow: pip install 'claude-router[parquet]'"),
        (["--ledger", str(tmp_path / "missing.db")], "no ledger at"),
        (["--ledger", ledger, "--since", "last tuesday"], "--since wants"),
    ]
    for args, message in cases:
        result = runner.invoke(cli, ["ledger", "export", *args])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
    not_a_ledger = tmp_path / "other.db"
    sqlite3.connect(not_a_ledger).execute("CREATE TABLE t (x)")
    result = runner.invoke(cli, ["ledger", "export", "--ledger", str(not_a_ledger)])
    assert result.exit_code == 1 and "cannot use the ledger" in result.output


# ------------------------------------------------------------------ the queue


def test_a_full_queue_drops_the_oldest_and_a_failing_disk_is_counted(tmp_path: Path) -> None:
    from router.accounting.account import Record

    metrics = Metrics()
    files = LedgerFiles(tmp_path / "ledger.db", LedgerConfig())
    ledger = Ledger(metrics, FactorLearner(), files=files, max_pending=3)
    ledger.configure(load_policy(None))
    for i in range(5):
        ledger.append(Record(f"req_{i}", "GET", "/v1/models", 200, None, None, None, 0.01),
                      None, None)
    assert asyncio.run(ledger.flush()) == 3
    assert [e.request_id for e in Reader(tmp_path / "ledger.db").entries()] == [
        "req_2", "req_3", "req_4"]
    files.db.close()  # the disk goes away
    ledger.append(Record("req_5", "GET", "/v1/models", 200, None, None, None, 0.01), None, None)
    assert asyncio.run(ledger.flush()) == 0
    text = metrics.exposition()[0].decode()
    assert 'router_ledger_records_total{result="dropped"} 2.0' in text
    assert 'router_ledger_records_total{result="written"} 3.0' in text
    assert 'router_ledger_records_total{result="failed"} 1.0' in text


def test_a_stopping_proxy_writes_what_it_holds(fake: FakeUpstream, tmp_path: Path) -> None:
    path = config_file(tmp_path, "router.yaml", fake.url)
    path.write_text(path.read_text().replace("flush_seconds: 0.05", "flush_seconds: 60"))
    with running_proxy(load(path)) as url:
        body = {"model": "claude-haiku-4-5", "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(3):
            assert post(url, json.dumps(body).encode())[0] == 200
        assert total(scrape(url), "router_ledger_records_total", result="written") == 0
    assert len(list(Reader(tmp_path / "state" / "ledger.db").entries())) == 3


def test_without_a_ledger_nothing_is_written(fake: FakeUpstream, tmp_path: Path) -> None:
    path = config_file(tmp_path, "router.yaml", fake.url)
    path.write_text(path.read_text().replace("  enabled: true\n", "  enabled: false\n", 1))
    with running_proxy(load(path)) as url:
        assert post(url, json.dumps({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [
            {"role": "user", "content": "hi"}]}).encode())[0] == 200
    assert not (tmp_path / "state" / "ledger.db").exists()


def test_an_unusable_ledger_file_is_logged_and_the_proxy_serves(
        fake: FakeUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ledger.dir where no directory can be: the proxy still starts and answers, and says in
    its log which path failed and what to change."""
    (tmp_path / "a-file").write_text("not a directory")
    path = config_file(tmp_path, "router.yaml", fake.url)
    unusable = f"ledger:\n  dir: {tmp_path / 'a-file'}\n"
    path.write_text(path.read_text().replace("ledger:\n", unusable, 1))
    with caplog.at_level("ERROR", logger="router.ledger"), running_proxy(load(path)) as url:
        assert post(url, json.dumps({"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [
            {"role": "user", "content": "hi"}]}).encode())[0] == 200
    logged = [r.msg for r in caplog.records if isinstance(r.msg, dict)
              and r.msg.get("event") == "ledger_unavailable"]
    assert logged and str(tmp_path / "a-file") in logged[0]["path"]
    assert "ledger.enabled: false" in logged[0]["fix"]


# ------------------------------------------------------------------ config


def test_ledger_and_shadow_settings_are_checked_at_load(tmp_path: Path) -> None:
    text = config_text("http://127.0.0.1:1")
    bad = text.replace("  max_mb: 1024", "  max_mb: 0").replace("  flush_seconds: 1",
                                                                "  flush_seconds: -1")
    with pytest.raises(ConfigError) as caught:
        parse_config(bad)
    assert caught.value.problems == ["ledger.max_mb: must be positive",
                                     "ledger.flush_seconds: must be positive"]
    with pytest.raises(ConfigError) as caught:
        parse_config(text.replace("  store_bodies: false", "  store_body: false"))
    assert "ledger.store_body" in caught.value.problems[0]

    main = tmp_path / "router.yaml"
    main.write_text(text + "shadow: candidate.yaml\n")
    with pytest.raises(ConfigError) as caught:
        parse_policy(main.read_text(), str(main))
    assert "shadow (line" in caught.value.problems[0]
    assert "candidate.yaml: cannot read" in caught.value.problems[0]
    (tmp_path / "candidate.yaml").write_text(text.replace("tier: haiku", "tier: tiny", 1))
    with pytest.raises(ConfigError) as caught:
        parse_policy(main.read_text(), str(main))
    assert "candidate.yaml: " in caught.value.problems[0] and "tiny" in caught.value.problems[0]
    (tmp_path / "candidate.yaml").write_text(text + "shadow: router.yaml\n")
    with pytest.raises(ConfigError) as caught:
        parse_policy(main.read_text(), str(main))
    assert "names a shadow of its own" in caught.value.problems[0]
    (tmp_path / "candidate.yaml").write_text(text.replace("tier: haiku", "tier: sonnet", 1))
    policy = parse_policy(main.read_text(), str(main))
    assert policy.shadow is not None and policy.shadow.rules[0].tier == "sonnet"
    check = CliRunner().invoke(cli, ["check", "--config", str(main)])
    assert check.exit_code == 0, check.output
    assert f"shadow {tmp_path / 'candidate.yaml'}: ok, 4 rules" in check.output
