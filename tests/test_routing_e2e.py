"""Routing against the running proxy: rules, hot reload, explain, conversation safety."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import anthropic

from router.fake import FakeUpstream, Reply
from tests import procs
from tests.conftest import API_KEY, config_text, post
from tests.procs import wait_for

RULES_V1 = """\
default: sonnet
rules:
  - name: short-to-haiku
    when: {complexity: simple}
    tier: haiku
"""
RULES_V2 = """\
default: sonnet
rules:
  - name: everything-to-opus
    tier: opus
"""
SIMPLE = {"model": "claude-opus-4-7", "max_tokens": 32,
          "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def write(path: Path, policy_yaml: str, upstream: str, poll: float = 0.1) -> None:
    text = config_text(upstream, policy_yaml).replace(
        "reload_poll_seconds: 1", f"reload_poll_seconds: {poll}")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic, as editors and ConfigMaps do


def routed_model(url: str) -> tuple[str, dict[str, str]]:
    status, headers, _ = post(url, json.dumps(SIMPLE).encode())
    assert status == 200
    return headers["x-router-model"], headers


def test_rules_route_and_the_upstream_sees_it(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy(RULES_V1)
    model, headers = routed_model(url)
    assert model == "claude-haiku-4-5"
    assert headers["x-router-tier"] == "haiku"
    assert headers["x-router-rule"] == "short-to-haiku"
    assert fake.received[-1].json()["model"] == "claude-haiku-4-5"


def test_edited_file_changes_routing_and_a_broken_edit_does_not(
    fake: FakeUpstream, start_proxy: Any, tmp_path: Path
) -> None:
    from router.routing.rules import load_policy

    path = tmp_path / "router.yaml"
    write(path, RULES_V1, fake.url)
    url = start_proxy(policy=load_policy(str(path)), config_path=str(path))
    assert routed_model(url)[0] == "claude-haiku-4-5"

    write(path, RULES_V2, fake.url)
    assert wait_for(lambda: routed_model(url)[0] == "claude-opus-4-7")
    assert routed_model(url)[1]["x-router-rule"] == "everything-to-opus"

    sha_before = json.loads(urllib.request.urlopen(url + "/readyz").read())["config_sha256"]
    write(path, RULES_V2.replace("tier: opus", "tier: gpt-5"), fake.url)
    time.sleep(0.6)  # several poll intervals
    assert routed_model(url)[0] == "claude-opus-4-7"
    assert json.loads(urllib.request.urlopen(url + "/readyz").read())["config_sha256"] == sha_before


def test_explain_endpoint_reports_without_calling_upstream(fake: FakeUpstream, start_proxy: Any
                                                           ) -> None:
    url = start_proxy(RULES_V1)
    request = urllib.request.Request(url + "/v1/router/explain", data=json.dumps(SIMPLE).encode(),
                                     method="POST")
    report = json.loads(urllib.request.urlopen(request).read())
    assert report["decision"]["model"] == "claude-haiku-4-5"
    assert report["decision"]["rule"] == "short-to-haiku"
    assert report["rules"] == [{"rule": "short-to-haiku", "matched": True,
                                "when": "complexity eq 'simple'", "effect": "route to haiku"}]
    assert report["features"]["complexity"] == "simple"
    assert report["features"]["requested_model"] == "claude-opus-4-7"
    assert fake.received == []
    bad = urllib.request.Request(url + "/v1/router/explain", data=b"{}", method="POST")
    try:
        urllib.request.urlopen(bad)
        raise AssertionError("expected a 400")
    except urllib.error.HTTPError as err:
        assert err.code == 400
        assert json.loads(err.read())["error"]["message"] == "model: Field required"


def test_cli_explain_matches_the_server(tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    write(path, RULES_V1, "http://127.0.0.1:9")
    request = tmp_path / "request.json"
    request.write_text(json.dumps(SIMPLE))
    out = subprocess.run([sys.executable, "-m", "router", "explain", str(request), "--config",
                          str(path), "--json"], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout)
    assert report["decision"]["rule"] == "short-to-haiku"
    text = subprocess.run([sys.executable, "-m", "router", "explain", str(request), "--config",
                           str(path)], capture_output=True, text=True, check=True).stdout
    assert "claude-haiku-4-5" in text
    assert "✓ short-to-haiku" in text


def test_thinking_conversation_stays_on_the_model_that_signed_it(
    fake: FakeUpstream, start_proxy: Any
) -> None:
    # The model scores a request with extended thinking switched on above a bare one; the
    # threshold is moved so that this trivial first turn is sure to start on haiku.
    url = start_proxy("complexity: {simple_below: 45}\n" + RULES_V1)
    client = anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=0)
    session = {"x-claude-code-session-id": "sess-1"}
    first_turn = [{"role": "user", "content": "What is 2+2? Check with the calculator."}]
    fake.script(Reply(text="", thinking="Simple sum.",
                      tool_use={"id": "tu_1", "name": "calc", "input": {"expr": "2+2"}}))
    answer = client.messages.create(model="claude-sonnet-4-6", max_tokens=2048,
                                    thinking={"type": "enabled", "budget_tokens": 1024},
                                    messages=first_turn, extra_headers=session)
    assert fake.received[-1].json()["model"] == "claude-haiku-4-5"
    # The tool result reads like hard work, which the rules would send elsewhere, but the loop
    # carries the thinking block haiku signed: it must go back to haiku.
    second_turn = [*first_turn, {"role": "assistant", "content": answer.model_dump()["content"]},
                   {"role": "user", "content": [{
                       "type": "tool_result", "tool_use_id": "tu_1",
                       "content": "Now prove there are infinitely many primes, step by step, "
                                  "and analyse the trade-offs of each proof strategy."}]}]
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=2048, messages=second_turn,
        thinking={"type": "enabled", "budget_tokens": 1024}, extra_headers=session)
    assert raw.headers["x-router-conversation"] == "tool-loop"
    assert fake.received[-1].json()["model"] == "claude-haiku-4-5"


def test_sighup_reloads_a_running_server(fake: FakeUpstream, tmp_path: Path) -> None:
    path = tmp_path / "router.yaml"
    write(path, RULES_V1, fake.url, poll=0)
    with procs.router("serve", "--config", str(path), env={"ROUTER_UPSTREAM_URL": fake.url},
                      timeout=20) as server:
        assert routed_model(server.url)[0] == "claude-haiku-4-5"
        write(path, RULES_V2, fake.url, poll=0)
        time.sleep(0.3)
        assert routed_model(server.url)[0] == "claude-haiku-4-5"  # polling is off: nothing yet
        server.signal(signal.SIGHUP)
        assert wait_for(lambda: routed_model(server.url)[0] == "claude-opus-4-7")
        server.stop(15)
    reloads = [json.loads(line) for line in server.output().splitlines()
               if line.startswith("{") and "config_reload" in line]
    assert reloads and reloads[-1]["trigger"] == "sighup" and reloads[-1]["result"] == "ok"
