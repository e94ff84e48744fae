"""The official TypeScript SDK cannot tell the proxy from the API: the scenarios of
``tests/clients/sdk.mjs`` run against the fake upstream directly and through the proxy, and
print the same thing both times (messages, stream events, pages, tool loops, error classes).

Loading the SDK costs most of a node run, so one node process runs every scenario per base URL
(a module fixture) and the tests below each check one scenario's pair of results.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from router.fake import Behaviour, Fail, FakeUpstream, Received, Reply, StreamError
from tests.conftest import API_KEY, make_policy, without_retries
from tests.node_clients import NodeClients, run_sdk

RANDOM_ID = re.compile(r"^(msg|req)_\w+$")
STREAMED = Reply(text="one two three four five six seven", thinking="Let me think.")
WEATHER = Reply(text="Let me check.", tool_use={"name": "get_weather", "input": {"city": "Paris"}})
WEATHER_ANSWER = "It is 18 degrees and sunny in Paris."
ERRORS = [
    (Fail(529, "overloaded_error"), "OverloadedError"),
    (Fail(429, "rate_limit_error", headers={"retry-after": "7"}), "RateLimitError"),
    (Fail(500, "api_error"), "InternalServerError"),
    (Fail(400, "invalid_request_error", "prompt is too long"), "BadRequestError"),
    (Fail(401, "authentication_error"), "AuthenticationError"),
    (Fail(403, "permission_error"), "PermissionDeniedError"),
    (Fail(404, "not_found_error", "model: claude-nope"), "NotFoundError"),
]
# (label, sdk.mjs scenario, what the fake answers its POST /v1/messages with, in order).
SCENARIOS: list[tuple[str, str, tuple[Behaviour, ...]]] = [
    ("create", "create", (Reply(),)),
    ("stream", "stream", (STREAMED,)),
    ("stream_error", "stream_error", (StreamError(after_events=4),)),
    ("count_tokens", "count_tokens", ()),
    ("models", "models", ()),
    ("tool_loop", "tool_loop", (WEATHER, Reply(text=WEATHER_ANSWER))),
    *[(f"error-{fail.status}", "error", (fail,)) for fail, _ in ERRORS],
]


@dataclass(frozen=True)
class Run:
    """What one node process printed per scenario label, and what the fake received."""

    results: dict[str, Any]
    received: list[Received]

    def messages_requests(self) -> list[dict[str, Any]]:
        """The bodies of the POST /v1/messages requests, in order."""
        return [r.json() for r in self.received if r.path == "/v1/messages"]


@pytest.fixture(scope="module")
def runs(node_clients: NodeClients, fake_server: FakeUpstream, proxy_url: str,
         tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every scenario, run once against the fake (``direct``) and once through the passthrough
    proxy (``proxied``)."""
    home = tmp_path_factory.mktemp("node-home")
    runs = {}
    for name, url in (("direct", fake_server.url), ("proxied", proxy_url)):
        fake_server.clear()
        for _, _, script in SCENARIOS:
            fake_server.script(*script)
        printed = run_sdk(node_clients, url, [s for _, s, _ in SCENARIOS], API_KEY, home)
        runs[name] = Run(dict(zip([label for label, _, _ in SCENARIOS], printed, strict=True)),
                         fake_server.received)
    fake_server.clear()
    return runs


def normalized(value: Any) -> Any:
    """``value`` with the random message and request ids replaced by their prefix."""
    if isinstance(value, dict):
        return {key: normalized(item) for key, item in value.items()}
    if isinstance(value, list):
        return [normalized(item) for item in value]
    if isinstance(value, str) and RANDOM_ID.match(value):
        return value.split("_")[0] + "_*"
    return value


def pair(runs: dict[str, Run], label: str) -> tuple[Any, Any]:
    """The (direct, proxied) results of one scenario."""
    return runs["direct"].results[label], runs["proxied"].results[label]


def test_create_matches_direct(runs: dict[str, Run]) -> None:
    direct, proxied = pair(runs, "create")
    assert direct.pop("routerModel") is None
    assert proxied.pop("routerModel") == "claude-sonnet-4-6"
    assert normalized(proxied) == normalized(direct)
    assert proxied["message"]["content"] == [{"type": "text",
                                              "text": "Hello from claude-sonnet-4-6."}]
    assert proxied["message"]["usage"]["input_tokens"] > 0
    assert proxied["requestId"].startswith("req_")
    # The request reached the upstream as the SDK sent it: same body, auth and version.
    sent_direct, sent_proxied = (run.received[0] for run in runs.values())
    assert sent_proxied.body == sent_direct.body
    for name in ("anthropic-version", "authorization", "x-api-key", "user-agent",
                 "x-stainless-lang", "x-stainless-package-version"):
        assert sent_proxied.header(name) == sent_direct.header(name), name
    assert sent_proxied.header("authorization") == f"Bearer {API_KEY}"
    assert sent_proxied.header("anthropic-version") == "2026-10-21"
    assert (sent_proxied.header("user-agent") or "").startswith("Anthropic/JS 1.14.0")


def test_stream_matches_direct(runs: dict[str, Run]) -> None:
    direct, proxied = pair(runs, "stream")
    assert normalized(proxied) == normalized(direct)
    assert [e["type"] for e in proxied["events"]][:2] == ["message_start", "content_block_start"]
    assert proxied["events"][-1]["type"] == "message_stop"
    final = proxied["final"]
    assert [b["type"] for b in final["content"]] == ["thinking", "text"]
    assert final["content"][0]["signature"]
    assert proxied["text"] == final["content"][1]["text"] == STREAMED.text
    assert final["usage"]["output_tokens"] > 0
    assert runs["proxied"].messages_requests()[1]["stream"] is True


def test_stream_error_event_matches_direct(runs: dict[str, Run]) -> None:
    direct, proxied = pair(runs, "stream_error")
    assert proxied == direct
    assert proxied["seen"][0] == "message_start"
    assert proxied["error"]["type"] == "overloaded_error"
    assert "APIError" in proxied["error"]["classes"]


def test_count_tokens_and_models_match_direct(runs: dict[str, Run]) -> None:
    direct, proxied = pair(runs, "count_tokens")
    assert proxied == direct
    assert proxied["input_tokens"] > 0
    direct, proxied = pair(runs, "models")
    assert proxied == direct
    assert "claude-opus-4-7" in proxied["ids"]
    assert proxied["retrieved"]["id"] == "claude-haiku-4-5"
    # Auto-pagination followed several pages of 3, all through the proxy.
    listed = [r for r in runs["proxied"].received if r.path == "/v1/models"]
    assert len(listed) >= 2
    assert any("after_id=" in r.query for r in listed)


def test_tool_use_round_trip_matches_direct(runs: dict[str, Run]) -> None:
    direct, proxied = pair(runs, "tool_loop")
    assert normalized(proxied) == normalized(direct)
    first, second = proxied["first"], proxied["second"]
    assert first["stop_reason"] == "tool_use"
    call = next(b for b in first["content"] if b["type"] == "tool_use")
    assert (call["name"], call["input"]) == ("get_weather", {"city": "Paris"})
    assert second["content"] == [{"type": "text", "text": WEATHER_ANSWER}]
    # The upstream saw the assistant turn verbatim and the tool result that answers it.
    history = next(body["messages"] for body in runs["proxied"].messages_requests()
                   if len(body["messages"]) == 3)
    assert history[1] == {"role": "assistant", "content": first["content"]}
    assert history[2]["content"] == [{"type": "tool_result", "tool_use_id": call["id"],
                                      "content": "18 degrees and sunny"}]


@pytest.mark.parametrize(("fail", "name"), ERRORS, ids=[f"{f.status}" for f, _ in ERRORS])
def test_error_classes_match_direct(runs: dict[str, Run], fail: Fail, name: str) -> None:
    direct, proxied = pair(runs, f"error-{fail.status}")
    assert proxied == direct
    error = proxied["error"]
    assert error["name"] == name
    assert {"APIError", "AnthropicError", name} <= set(error["classes"])
    assert error["status"] == fail.status
    assert error["type"] == fail.error_type
    assert error["apiMessage"] == fail.message
    assert error["requestIdShape"] == "req_*"
    expected_retry_after = fail.headers.get("retry-after", "1" if fail.status == 429 else None)
    assert error["retryAfter"] == expected_retry_after


def test_proxy_502_when_upstream_is_down(node_clients: NodeClients, start_proxy: Any,
                                         tmp_path: Any) -> None:
    url = start_proxy(policy=without_retries(make_policy("http://127.0.0.1:9")))
    error = run_sdk(node_clients, url, ["error"], API_KEY, tmp_path)[0]["error"]
    assert error["name"] == "InternalServerError"
    assert error["status"] == 502
    assert error["type"] == "api_error"
    assert API_KEY not in str(error)


def test_a_claude_code_shaped_loop_through_the_routing_proxy_stays_on_one_model(
        node_clients: NodeClients, fake: FakeUpstream, start_proxy: Callable[..., str],
        tmp_path: Path) -> None:
    """The shipped router.yaml routes, and the TypeScript SDK's tool loop stays whole: one
    model for every turn, thinking sent back verbatim to the model that signed it, the cache
    read back, and answers that report the model the client asked for."""
    url = start_proxy(policy=make_policy(fake.url, None))
    (result,) = run_sdk(node_clients, url, ["agent_loop"], API_KEY, tmp_path)
    turns = result["turns"]
    assert len(turns) == 3
    routed = {t["routerModel"] for t in turns}
    assert len(routed) == 1, turns
    assert [t["conversation"] for t in turns][1:] == ["tool-loop", "tool-loop"]
    assert all(t["message"]["model"] == "claude-opus-4-8" for t in turns)
    requests = [r for r in fake.received if r.path == "/v1/messages"]
    assert {r.json()["model"] for r in requests} == routed
    # The second and third turns read the prefix the turn before them wrote.
    assert all(b["cache_read_input_tokens"] > 0 for b in fake.billed[1:])
