"""The real Claude Code CLI (``claude -p``) against the proxy, with the fake upstream behind it.

Every run has a fresh ``HOME`` and config directory, a test API key and
``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``, and talks to nothing but its base URL. The tests
pin down what Claude Code sends (the shape the router's classifier and conversation logic rely
on), that it works through the proxy, that a tool loop runs a real tool, and how it treats
thinking blocks from an answer whose ``model`` is not the one it asked for.

``tests/fixtures/claude-code-main-request.json`` is a captured main request (API key removed,
temporary paths replaced by ``/home/user``) for other tests; ``ROUTER_UPDATE_FIXTURES=1``
rewrites it from a fresh capture, e.g. after the pinned version changes.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from router.fake import FakeUpstream, Received, Reply
from tests.conftest import API_KEY, make_policy
from tests.node_clients import ClaudeRun, NodeClients, run_claude

CLAUDE_VERSION = "2.1.332"
FIXTURE = Path(__file__).parent / "fixtures" / "claude-code-main-request.json"
UPDATE_ENV = "ROUTER_UPDATE_FIXTURES"
# Headers that differ on every run or carry the key; left out of the fixture.
VOLATILE_HEADERS = frozenset({"host", "content-length", "x-api-key", "authorization",
                              "x-claude-code-session-id", "x-claude-code-prompt-id"})
HINTS = {"CLAUDE_CODE_GATEWAY_HINT_HEADERS": "1"}

Claude = Callable[..., ClaudeRun]


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    """A fresh home with a working directory ``work``."""
    (tmp_path / "home" / "work").mkdir(parents=True)
    return tmp_path / "home"


@pytest.fixture()
def claude(node_clients: NodeClients, home: Path) -> Claude:
    """Run ``claude`` with the given arguments against a base URL, in this test's home."""

    def run(base_url: str, *args: str, env: dict[str, str] | None = None) -> ClaudeRun:
        return run_claude(node_clients, base_url, API_KEY, home, *args, env=env)

    return run


def messages_requests(fake: FakeUpstream) -> list[Received]:
    """The POST /v1/messages requests the fake received, in order."""
    return [r for r in fake.received if r.path == "/v1/messages"]


def sse_data(sent: bytes) -> list[dict[str, Any]]:
    """The decoded ``data:`` payloads of a streamed answer the fake sent."""
    return [json.loads(line.removeprefix(b"data: ")) for line in sent.split(b"\n")
            if line.startswith(b"data: ")]


def thinking_sent(sent: bytes) -> list[dict[str, str]]:
    """The thinking blocks of a streamed answer the fake sent, put back together."""
    blocks: dict[int, dict[str, str]] = {}
    for event in sse_data(sent):
        if event["type"] == "content_block_start" and event["content_block"]["type"] == "thinking":
            blocks[event["index"]] = {"type": "thinking", "thinking": "", "signature": ""}
        elif event["type"] == "content_block_delta" and event["index"] in blocks:
            delta, block = event["delta"], blocks[event["index"]]
            if delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] += delta["signature"]
    return [blocks[index] for index in sorted(blocks)]


def breakpoints(body: dict[str, Any]) -> list[str]:
    """Where the request puts ``cache_control``, as ``system.N``, ``tools.N`` or
    ``messages.N.content.M`` paths."""
    found = [f"system.{i}" for i, block in enumerate(body.get("system", []))
             if "cache_control" in block]
    found += [f"tools.{i}" for i, tool in enumerate(body.get("tools", []))
              if "cache_control" in tool]
    for m, message in enumerate(body["messages"]):
        if isinstance(message["content"], list):
            found += [f"messages.{m}.content.{b}" for b, block in enumerate(message["content"])
                      if "cache_control" in block]
    return found


def shape(request: dict[str, Any]) -> dict[str, Any]:
    """What a captured main request is made of, without its per-run text: enough to notice when
    a new Claude Code version sends something else."""
    body = request["body"]
    headers = {name.lower(): value for name, value in request["headers"].items()}
    return {
        "query": request["query"],
        "headers": sorted(headers),
        "betas": headers["anthropic-beta"].split(","),
        "body_keys": sorted(body),
        "roles": [m["role"] for m in body["messages"]],
        "tools": [t["name"] for t in body["tools"]],
        "thinking": body.get("thinking"),
        "output_config": body.get("output_config"),
        "context_management": body.get("context_management"),
        "breakpoints": breakpoints(body),
    }


def captured(request: Received, home: Path) -> dict[str, Any]:
    """A received request as the fixture stores it: no key, no volatile headers, stable paths."""
    assert API_KEY not in request.body.decode()
    body = json.loads(request.body.decode().replace(str(home), "/home/user"))
    headers = {name: value for name, value in request.headers
               if name.lower() not in VOLATILE_HEADERS}
    return {"claude_code_version": CLAUDE_VERSION, "method": request.method,
            "path": request.path, "query": request.query, "headers": headers, "body": body}


def test_main_request(claude: Claude, fake: FakeUpstream, home: Path) -> None:
    run = claude(fake.url, "-p", "Say hello", "--output-format", "json", env=HINTS)
    result = run.result()
    (request,) = fake.received  # no HEAD /api/hello, no model discovery, nothing else
    body = request.json()
    assert result["result"] == f"Hello from {body['model']}."
    assert (request.method, request.path, request.query) == ("POST", "/v1/messages", "beta=true")
    assert request.header("x-claude-code-session-id") == result["session_id"]
    assert request.header("x-claude-code-request-class") == "main"
    assert request.header("x-api-key") == API_KEY
    assert request.header("anthropic-version") == "2023-06-01"
    assert request.header("x-app") == "cli"
    assert (request.header("user-agent") or "").startswith(f"claude-cli/{CLAUDE_VERSION} ")
    assert "claude-code-20250219" in (request.header("anthropic-beta") or "").split(",")
    assert body["stream"] is True
    assert body["thinking"]["type"] == "adaptive"
    assert body["output_config"]["effort"] in ("low", "medium", "high", "xhigh", "max")
    assert body["system"][0]["text"].startswith(
        f"x-anthropic-billing-header: cc_version={CLAUDE_VERSION}")
    # The prompt is the user turn's last block; a system message follows it and holds the
    # conversation's last cache breakpoint.
    user, trailing = body["messages"][-2:]
    assert (user["role"], user["content"][-1]["text"]) == ("user", "Say hello")
    assert trailing["role"] == "system"
    last = len(body["messages"]) - 1
    assert breakpoints(body)[-1] == f"messages.{last}.content.{len(trailing['content']) - 1}"
    assert f"system.{len(body['system']) - 1}" in breakpoints(body)

    fresh = captured(request, home)
    if os.environ.get(UPDATE_ENV) == "1":
        FIXTURE.write_text(json.dumps(fresh, indent=1, ensure_ascii=False) + "\n")
    stored = json.loads(FIXTURE.read_text())
    assert shape(stored) == shape(fresh), (
        f"Claude Code now sends another request shape; rerun with {UPDATE_ENV}=1 to refresh "
        f"{FIXTURE.name}")


# What Claude Code 2.1.332 asks of each model: (--model, thinking type, effort, max_tokens,
# whether a system message follows the user's). Without --model it picks claude-opus-5-5.
PER_MODEL = [
    (None, "claude-opus-5-5", "adaptive", "medium", 128_000, True),
    ("claude-opus-4-8", "claude-opus-4-8", "adaptive", "high", 64_000, True),
    ("claude-opus-4-7", "claude-opus-4-7", "adaptive", "xhigh", 64_000, False),
    ("claude-haiku-4-5", "claude-haiku-4-5", "enabled", None, 32_000, False),
]


@pytest.mark.parametrize(("flag", "model", "thinking", "effort", "max_tokens", "trailing"),
                         PER_MODEL, ids=[row[1] for row in PER_MODEL])
def test_request_per_model(claude: Claude, fake: FakeUpstream, flag: str | None, model: str,
                           thinking: str, effort: str | None, max_tokens: int,
                           trailing: bool) -> None:
    chosen = ("--model", flag) if flag else ()
    claude(fake.url, "-p", "Say hello", "--output-format", "json", *chosen).result()
    body = fake.received[-1].json()
    assert body["model"] == model
    assert body["thinking"]["type"] == thinking
    if thinking == "enabled":
        assert 0 < body["thinking"]["budget_tokens"] < max_tokens
    assert body.get("output_config", {}).get("effort") == effort
    assert body["max_tokens"] == max_tokens
    assert [m["role"] for m in body["messages"]][-1] == ("system" if trailing else "user")


def test_answer_through_proxy(claude: Claude, fake: FakeUpstream, proxy_url: str) -> None:
    result = claude(proxy_url, "-p", "Say hello", "--output-format", "json").result()
    (request,) = fake.received
    assert result["result"] == f"Hello from {request.json()['model']}."
    assert result["is_error"] is False
    assert request.query == "beta=true"
    assert request.header("x-claude-code-session-id") == result["session_id"]
    # Without CLAUDE_CODE_GATEWAY_HINT_HEADERS there is no request class.
    assert request.header("x-claude-code-request-class") is None


def test_model_discovery_through_proxy(claude: Claude, fake: FakeUpstream, proxy_url: str
                                       ) -> None:
    env = {"CLAUDE_CODE_ENABLE_GATEWAY_MODEL_DISCOVERY": "1"}
    claude(proxy_url, "-p", "Say hello", "--output-format", "json", env=env).result()
    discovery, message = fake.received
    assert (discovery.method, discovery.path, discovery.query) == ("GET", "/v1/models",
                                                                   "limit=1000")
    assert message.path == "/v1/messages"


def read_the_note(claude: Claude, fake: FakeUpstream, url: str, home: Path, *args: str,
                  env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a two-turn tool loop: the fake calls Read on a note, Claude Code reads it for real
    and sends the result, the fake answers; return Claude Code's JSON result."""
    note = home / "work" / "note.txt"
    note.write_text("the marker is 7f3a9c\n")
    fake.script(
        Reply(text="", thinking="I should read the note.",
              tool_use={"name": "Read", "input": {"file_path": str(note)}}),
        Reply(text="The marker is 7f3a9c."),
    )
    return claude(url, "-p", "What does note.txt say?", "--output-format", "json",
                  "--allowedTools", "Read", *args, env=env).result()


def test_tool_loop_runs_a_real_tool(claude: Claude, fake: FakeUpstream, proxy_url: str,
                                    home: Path) -> None:
    result = read_the_note(claude, fake, proxy_url, home)
    assert result["result"] == "The marker is 7f3a9c."
    assert result["num_turns"] == 2
    first, second = messages_requests(fake)
    answered = sse_data(fake.sent[0])[0]["message"]
    history = second.json()["messages"]
    # The assistant turn goes back verbatim, signed thinking block included.
    assistant = next(m for m in history if m["role"] == "assistant")
    assert [b["type"] for b in assistant["content"]] == ["thinking", "tool_use"]
    assert assistant["content"][:1] == thinking_sent(fake.sent[0])
    call = assistant["content"][1]
    assert call["name"] == "Read"
    # Claude Code ran the tool and sent its output.
    (tool_result,) = history[-1]["content"]
    assert tool_result["type"] == "tool_result"
    assert tool_result["tool_use_id"] == call["id"]
    assert "the marker is 7f3a9c" in tool_result["content"]
    assert tool_result.get("is_error", False) is False
    assert answered["model"] == first.json()["model"] == second.json()["model"]
    # The prefix the first turn wrote to the prompt cache is read back on the second.
    written, read = fake.billed[0], fake.billed[1]
    assert read["cache_read_input_tokens"] >= written["cache_creation_input_tokens"] > 0
    assert first.header("x-claude-code-session-id") == second.header("x-claude-code-session-id")


def test_tool_loop_from_a_directive(claude: Claude, fake: FakeUpstream, proxy_url: str,
                                    home: Path) -> None:
    """A tool loop the fake starts on its own when the prompt asks for it, as replays and
    benchmarks drive it, with no script queued. The fake makes the call's input up from the
    tool's schema, so Read reports a missing file: still a tool result for the call."""
    result = claude(proxy_url, "-p", "[[reply:tool=Read]] Read the app", "--output-format",
                    "json", "--allowedTools", "Read", "--max-turns", "3").result()
    assert result["num_turns"] == 2
    first, second = messages_requests(fake)
    history = second.json()["messages"]
    assistant = next(m for m in history if m["role"] == "assistant")
    (call,) = [b for b in assistant["content"] if b["type"] == "tool_use"]
    assert call["name"] == "Read"
    results = [b for b in history[-1]["content"] if b["type"] == "tool_result"]
    assert [r["tool_use_id"] for r in results] == [call["id"]]
    assert first.header("x-claude-code-session-id") == second.header("x-claude-code-session-id")


# ---- thinking blocks from an answer that names another model


@contextmanager
def answers_as(upstream: str, models: list[str | None]) -> Iterator[str]:
    """Run a relay to ``upstream`` on loopback that rewrites the ``model`` of the n-th Messages
    answer to ``models[n]`` (None or past the end: unchanged); yield its base URL.

    It stands in for a router that reports the model that answered, not the one asked for.
    """
    pending = list(models)

    async def relay(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in ("host", "content-length")}
        async with ClientSession() as session, session.request(
            request.method, upstream + request.path_qs, data=body, headers=headers
        ) as answer:
            data = await answer.read()
            kept = {k: v for k, v in answer.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding",
                                         "content-encoding")}
        if request.path == "/v1/messages" and pending:
            model = pending.pop(0)
            if model is not None:
                asked = json.loads(body)["model"]
                data = data.replace(f'"model":"{asked}"'.encode(), f'"model":"{model}"'.encode())
        return web.Response(status=answer.status, body=data, headers=kept)

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def assistant_turns(request: Received) -> list[list[tuple[str, str]]]:
    """Each assistant turn of a request as (block type, its signature, text or tool name)."""
    return [[(b["type"], b.get("signature") or b.get("text") or b.get("name", ""))
             for b in m["content"]]
            for m in request.json()["messages"] if m["role"] == "assistant"]


def test_thinking_from_another_model_is_dropped_on_resume(claude: Claude, fake: FakeUpstream,
                                                          home: Path) -> None:
    """Claude Code keeps every thinking block while its process runs, whatever model the
    answer named; on ``--resume`` it drops the thinking of answers whose model is not the
    session's, and keeps the others verbatim."""
    note = home / "work" / "note.txt"
    note.write_text("hello\n")
    # Claude Code asks for thinking with display "omitted": the fake sends the thinking blocks
    # empty, each with its signature, and the signature tells them apart.
    fake.script(
        Reply(text="", thinking="Read it first.",
              tool_use={"name": "Read", "input": {"file_path": str(note)}}),
        Reply(text="It says hello.", thinking="Now answer."),
        Reply(text="Still hello.", thinking="Second turn."),
    )
    session = "8d3f0c2e-5b7a-4c1e-9f6d-2a1b3c4d5e6f"
    model = "claude-opus-4-8"
    common = ("--output-format", "json", "--allowedTools", "Read", "--model", model)
    # The first answer names Haiku, as a router that moved the turn would report it.
    with answers_as(fake.url, ["claude-haiku-4-5"]) as relay:
        claude(relay, "-p", "Read note.txt", "--session-id", session, *common).result()
        claude(relay, "-p", "And now?", "--resume", session, *common).result()
    first, loop_turn, resumed = messages_requests(fake)
    assert {r.json()["model"] for r in (first, loop_turn, resumed)} == {model}
    # Same process: the thinking of the Haiku-labelled answer goes back.
    (read_first,) = thinking_sent(fake.sent[0])
    (now_answer,) = thinking_sent(fake.sent[1])
    assert assistant_turns(loop_turn) == [[("thinking", read_first["signature"]),
                                           ("tool_use", "Read")]]
    # Resumed: dropped from the Haiku-labelled answer only; the other keeps its signature.
    assert assistant_turns(resumed) == [
        [("tool_use", "Read")],
        [("thinking", now_answer["signature"]), ("text", "It says hello.")],
    ]
    kept = [b for m in resumed.json()["messages"] if m["role"] == "assistant"
            for b in m["content"] if b["type"] == "thinking"]
    assert kept == [now_answer]


# ------------------------------------------------------------------ routed, shipped router.yaml


@pytest.fixture()
def routing_proxy(fake: FakeUpstream, start_proxy: Callable[..., str]) -> str:
    """A proxy that routes by the shipped router.yaml (rules, conversations, capabilities)."""
    return start_proxy(policy=make_policy(fake.url, None))


@pytest.mark.parametrize(("model", "thinking"), [("claude-opus-4-8", "adaptive"),
                                                 ("claude-haiku-4-5", "enabled")])
def test_a_routed_tool_loop_stays_on_one_model_with_its_cache_warm(
        claude: Claude, fake: FakeUpstream, routing_proxy: str, home: Path, model: str,
        thinking: str) -> None:
    result = read_the_note(claude, fake, routing_proxy, home, "--model", model, env=HINTS)
    assert result["result"] == "The marker is 7f3a9c."
    first, second = messages_requests(fake)
    assert first.json()["thinking"]["type"] == thinking or "thinking" not in first.json()
    # Routed to Sonnet (asked of Opus: a turn that may start a tool loop starts at Sonnet or
    # above; asked of Haiku: the rules judge the ask everyday work), never switched in the loop.
    routed = first.json()["model"]
    assert routed == "claude-sonnet-4-6"
    assert second.json()["model"] == routed
    # Claude Code kept the signed thinking block: the answer reported the model it asked for.
    assistant = next(m for m in second.json()["messages"] if m["role"] == "assistant")
    assert assistant["content"][:1] == thinking_sent(fake.sent[0])
    assert sse_data(fake.sent[0])[0]["message"]["model"] == routed
    # The second turn read what the first wrote.
    written, read = fake.billed[0], fake.billed[1]
    assert read["cache_read_input_tokens"] >= written["cache_creation_input_tokens"] > 0


def test_max_output_above_a_models_limit_does_not_break_claude_code(
        claude: Claude, fake: FakeUpstream, routing_proxy: str) -> None:
    # CLAUDE_CODE_MAX_OUTPUT_TOKENS=100000 on a trivial ask: the rules would pick Haiku, whose
    # limit is 64,000; the request must go to a model that takes it.
    env = {"CLAUDE_CODE_MAX_OUTPUT_TOKENS": "100000"}
    result = claude(routing_proxy, "-p", "Translate 'bonjour' to English.", "--output-format",
                    "json", "--model", "claude-opus-4-7", env=env).result()
    assert result["is_error"] is False
    (request,) = messages_requests(fake)
    assert request.json()["max_tokens"] == 100000
    assert request.json()["model"] != "claude-haiku-4-5"


def test_an_unknown_model_reaches_the_upstream_untouched(
        claude: Claude, fake: FakeUpstream, routing_proxy: str) -> None:
    claude(routing_proxy, "-p", "hi", "--output-format", "json", "--model", "gpt-4o")
    assert [r.json()["model"] for r in messages_requests(fake)][:1] == ["gpt-4o"]
