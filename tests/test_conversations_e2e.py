"""Conversations through the real proxy with the shipped router.yaml: tool loops stay whole,
signatures go home, models that cannot serve a request never get it, and nothing leaks across
callers.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from typing import Any

import anthropic
import pytest

from router.fake.upstream import Fail, FakeUpstream, Reply
from tests.conftest import API_KEY, RUNNING, make_policy, post, scrape, total, with_section

TOOLS = [{"name": "Bash", "description": "Run a shell command.",
          "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                           "required": ["command"]}}]
SESSION = {"x-claude-code-session-id": "3f0c5e1a-session", "x-app": "cli"}


def shipped(fake: FakeUpstream, start_proxy: Any) -> str:
    """A proxy on the shipped router.yaml (rules included), pointed at the fake."""
    return str(start_proxy(policy=make_policy(fake.url, None)))


def models_received(fake: FakeUpstream) -> list[str]:
    return [r.json()["model"] for r in fake.received if r.path.startswith("/v1/messages")]


def client(url: str, key: str = API_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)


def test_a_claude_code_tool_loop_stays_on_one_model(fake: FakeUpstream, start_proxy: Any
                                                    ) -> None:
    url = shipped(fake, start_proxy)
    first = [{"role": "user", "content": "run the tests and tell me what fails"},
             {"role": "system", "content": "Reminder: be concise."}]
    fake.script(Reply(text="", thinking="Run them.",
                      tool_use={"id": "tu_1", "name": "Bash", "input": {"command": "pytest"}}))
    raw = client(url).messages.with_raw_response.create(
        model="claude-opus-4-8", max_tokens=4096, messages=first, tools=TOOLS,  # type: ignore
        thinking={"type": "adaptive"}, extra_headers=SESSION)
    answer = raw.parse()
    routed = raw.headers["x-router-model"]
    assert raw.headers["x-router-conversation"] == "new"
    # The answer reports the model Claude Code asked for, so it keeps the thinking block.
    assert answer.model == "claude-opus-4-8"
    # The next turn is hard (the rules alone would send it up), but it is inside the loop.
    second = [first[0], {"role": "assistant", "content": answer.model_dump()["content"]},
              {"role": "user", "content": [{
                  "type": "tool_result", "tool_use_id": "tu_1",
                  "content": "FAILED test_ledger.py::test_concurrent_settle - race between "
                             "reserve and settle across two replicas; design a lock-free "
                             "protocol and prove it linearizable"}]},
              {"role": "system", "content": "Reminder: be concise."}]
    fake.script(Reply(text="Found it.", thinking="The settle path races."))
    raw2 = client(url).messages.with_raw_response.create(
        model="claude-opus-4-8", max_tokens=4096, messages=second, tools=TOOLS,  # type: ignore
        thinking={"type": "adaptive"}, extra_headers=SESSION)
    assert raw2.headers["x-router-model"] == routed
    assert raw2.headers["x-router-conversation"] == "tool-loop"
    assert models_received(fake) == [routed, routed]
    # The thinking block went back verbatim, to the model that signed it.
    sent = fake.received[-1].json()["messages"][1]["content"]
    assert sent[0]["type"] == "thinking" and sent[0]["signature"]


def test_signed_thinking_goes_back_to_its_signer_inside_a_stream(fake: FakeUpstream,
                                                                 start_proxy: Any) -> None:
    url = shipped(fake, start_proxy)
    first = [{"role": "user", "content": "list the repo"}]
    fake.script(Reply(text="", thinking="ls it",
                      tool_use={"id": "tu_9", "name": "Bash", "input": {"command": "ls"}}))
    with client(url).messages.stream(
            model="claude-sonnet-4-6", max_tokens=2048, messages=first,  # type: ignore
            tools=TOOLS, thinking={"type": "enabled", "budget_tokens": 1024},
            extra_headers=SESSION) as stream:
        answer = stream.get_final_message()
        signer = stream.response.headers["x-router-model"]
    assert answer.model == "claude-sonnet-4-6"
    # A different caller's state cannot route this one, but the signature itself does: the
    # proxy recorded who signed it while relaying the stream.
    second = [*first, {"role": "assistant", "content": answer.model_dump()["content"]},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_9",
                                            "content": "README.md src/"}]}]
    fake.script(Reply(text="done"))
    raw = client(url).messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=2048, messages=second, tools=TOOLS,  # type: ignore
        thinking={"type": "enabled", "budget_tokens": 1024})
    assert raw.headers["x-router-model"] == signer
    assert raw.headers["x-router-rule"] == "conversation"


def test_max_tokens_above_a_models_limit_never_reaches_it(fake: FakeUpstream,
                                                          start_proxy: Any) -> None:
    url = shipped(fake, start_proxy)
    # A task-spec system prompt keeps it simple however high max_tokens scores.
    status, headers, _ = post(url, json.dumps({
        "model": "claude-opus-4-7", "max_tokens": 100_000,
        "system": "You translate single words. Reply with only the translation.",
        "messages": [{"role": "user", "content": "Translate 'bonjour' to English."}]}).encode())
    assert status == 200
    assert models_received(fake) == ["claude-sonnet-4-6"]
    assert "max_tokens 100000 > 64000 on claude-haiku-4-5" in headers["x-router-reason"]


def test_an_unknown_model_passes_through_untouched(fake: FakeUpstream, start_proxy: Any
                                                   ) -> None:
    url = shipped(fake, start_proxy)
    with pytest.raises(anthropic.NotFoundError):
        client(url).messages.create(model="gpt-4o", max_tokens=64,
                                    messages=[{"role": "user", "content": "hi"}])
    assert models_received(fake) == ["gpt-4o"]


def test_a_routed_400_is_retried_on_the_requested_model(fake: FakeUpstream, start_proxy: Any
                                                        ) -> None:
    url = shipped(fake, start_proxy)
    fake.script(Fail(400, "invalid_request_error", "this model does not support that"),
                Reply(text="fine"))
    answer = client(url).messages.create(
        model="claude-opus-4-7", max_tokens=256,
        messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert answer.content[0].text == "fine"  # type: ignore[union-attr]
    assert models_received(fake) == ["claude-haiku-4-5", "claude-opus-4-7"]
    metrics = scrape(url)
    assert total(metrics, "router_reroute_rejected_total", model="claude-haiku-4-5") == 1
    # A 400 from the model the client asked for is the client's own: it is relayed.
    fake.script(Fail(400, "invalid_request_error", "bad"))
    with pytest.raises(anthropic.BadRequestError):
        client(url).messages.create(model="claude-haiku-4-5", max_tokens=256, messages=[
            {"role": "user", "content": "What is the capital of France?"}])
    assert models_received(fake)[-1] == "claude-haiku-4-5"


def test_two_callers_with_the_same_opening_do_not_share_a_conversation(
        fake: FakeUpstream, start_proxy: Any) -> None:
    url = shipped(fake, start_proxy)
    opening = [{"role": "user", "content": "Summarise the attached policy in one line."}]
    client(url, "sk-ant-tenant-a").messages.create(model="claude-opus-4-7", max_tokens=256,
                                                    messages=opening)
    body = json.dumps({"model": "claude-opus-4-7", "max_tokens": 256,
                       "messages": opening}).encode()

    def seen(key: str) -> int:
        _, _, data = post(url, body, {"x-api-key": key}, path="/v1/router/explain")
        return int(json.loads(data)["conversation"]["turns_seen"])

    assert seen("sk-ant-tenant-a") == 1
    assert seen("sk-ant-tenant-b") == 0
    # The key itself appears nowhere the proxy shows.
    assert "tenant" not in json.dumps(RUNNING[url].call(_dump_store(url)))


async def _dump_store(url: str) -> list[str]:
    store = RUNNING[url].state.store
    return [key for key in getattr(store, "_data", {})]


def test_answers_report_the_model_that_answered_when_configured(fake: FakeUpstream,
                                                                start_proxy: Any) -> None:
    actual = with_section(make_policy(fake.url, None), "conversations", response_model="actual")
    url = start_proxy(policy=actual)
    answer = client(url).messages.create(model="claude-opus-4-7", max_tokens=64,
                                         messages=[{"role": "user", "content": "hi"}])
    assert answer.model == models_received(fake)[-1] != "claude-opus-4-7"


def test_claude_code_discovery_answers_fast_when_the_upstream_hangs(start_proxy: Any) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        url = start_proxy(policy=make_policy(f"http://127.0.0.1:{silent.getsockname()[1]}",
                                             None))
        _discovery_is_fast(url)


def _discovery_is_fast(url: str) -> None:
    request = urllib.request.Request(url + "/api/hello", method="HEAD")
    assert urllib.request.urlopen(request, timeout=3).status == 200
    started = time.monotonic()
    request = urllib.request.Request(url + "/v1/models?limit=1000",
                                     headers={"x-api-key": API_KEY,
                                              "anthropic-version": "2023-06-01"})
    with urllib.request.urlopen(request, timeout=5) as response:
        page = json.loads(response.read())
        assert response.headers["x-router-source"] == "config"
    assert time.monotonic() - started < 3.0
    ids = [m["id"] for m in page["data"]]
    assert ids[:3] == ["claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"]
    assert all(i.startswith("claude") for i in ids) and page["has_more"] is False
