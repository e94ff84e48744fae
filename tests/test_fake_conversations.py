"""The fake upstream models multi-turn traffic as the real API does (spec §6.3): a prompt cache
per key and model, thinking signed by its model, capabilities per model, reply directives.
Driven over real HTTP with the official SDK and raw requests."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anthropic
import pytest

from router.fake import CATALOGUE, FakeUpstream, Reply, running_fake

SONNET, OPUS, HAIKU = "claude-sonnet-4-6", "claude-opus-4-6", "claude-haiku-4-5"
KEY = "sk-test-conversations"
EPHEMERAL: dict[str, Any] = {"type": "ephemeral"}
SYSTEM = "You are a careful assistant for a hardware shop. " * 40
TOOLS: list[dict[str, Any]] = [
    {"name": "Bash", "description": "Run a shell command",
     "input_schema": {"type": "object", "properties": {
         "command": {"type": "string"}, "timeout": {"type": "integer", "minimum": 1}},
         "required": ["command"]}},
    {"name": "Lookup", "description": "Find a product",
     "input_schema": {"type": "object", "properties": {
         "sku": {"type": "string", "enum": ["A-1", "B-2"]}, "count": {"type": "integer"},
         "tags": {"type": "array", "items": {"type": "string"}}}}},
]
LOOP_RULE = (
    "messages.1.content.0.type: Expected `thinking` or `redacted_thinking`, but found `text`. "
    "When `thinking` is enabled, a final `assistant` message must start with a thinking block "
    "(preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you "
    "include thinking blocks from previous turns. To avoid this requirement, disable "
    "`thinking`."
)


def sdk(fake: FakeUpstream, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.url, api_key=key, max_retries=0)


def post(fake: FakeUpstream, path: str, payload: Any, headers: dict[str, str] | None = None
         ) -> tuple[int, Any]:
    """One raw request; returns (status, decoded JSON body)."""
    parts = urlsplit(fake.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    sent = {"content-type": "application/json", "x-api-key": KEY,
            "anthropic-version": "2023-06-01", **(headers or {})}
    conn.request("POST", path, body=json.dumps(payload).encode(), headers=sent)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def advance(fake: FakeUpstream, seconds: float) -> None:
    """Moves the fake's cache clock through its admin endpoint, as a script would."""
    status, answer = post(fake, "/_fake/clock", {"advance": seconds})
    assert status == 200 and answer["offset"] >= seconds


def user(text: str, mark: bool = True) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    return {"role": "user", "content": [{**block, "cache_control": EPHEMERAL} if mark else block]}


def unmarked(message: dict[str, Any]) -> dict[str, Any]:
    return {"role": message["role"],
            "content": [{k: v for k, v in b.items() if k != "cache_control"}
                        for b in message["content"]]}


def system(ttl: str | None = None) -> list[dict[str, Any]]:
    mark = {"type": "ephemeral", "ttl": ttl} if ttl else EPHEMERAL
    return [{"type": "text", "text": SYSTEM, "cache_control": mark}]


def counted(client: anthropic.Anthropic, model: str, messages: list[dict[str, Any]],
            **extra: Any) -> int:
    return client.messages.count_tokens(model=model, messages=messages,
                                        **extra).input_tokens


def content(message: anthropic.types.Message) -> list[dict[str, Any]]:
    return [{k: v for k, v in b.model_dump(exclude_none=True).items() if k != "parsed_output"}
            for b in message.content]


@pytest.fixture
def own_fake() -> Iterator[FakeUpstream]:
    with running_fake() as server:
        yield server


# --------------------------------------------------------------------------- prompt cache


def test_rolling_breakpoint_writes_then_reads_the_previous_turn(fake: FakeUpstream) -> None:
    client = sdk(fake)
    first = [user("Which drill for concrete?")]
    one = client.messages.create(model=SONNET, max_tokens=256, system=system(),
                                 messages=first)
    total_one = counted(client, SONNET, first, system=system())
    assert (one.usage.cache_read_input_tokens, one.usage.cache_creation_input_tokens,
            one.usage.input_tokens) == (0, total_one, 0)
    assert one.usage.cache_creation is not None
    assert one.usage.cache_creation.ephemeral_5m_input_tokens == total_one

    # Turn two moves the breakpoint to the newest block, as Claude Code does.
    second = [unmarked(first[0]), {"role": "assistant", "content": content(one)},
              user("And for wood?")]
    two = client.messages.create(model=SONNET, max_tokens=256, system=system(),
                                 messages=second)
    total_two = counted(client, SONNET, second, system=system())
    assert two.usage.cache_read_input_tokens == total_one
    assert two.usage.cache_creation_input_tokens == total_two - total_one > 0
    assert two.usage.input_tokens == 0

    # Streaming bills the same way: the third identical request reads everything.
    with client.messages.stream(model=SONNET, max_tokens=256, system=system(),
                                messages=second) as stream:
        usage = stream.get_final_message().usage
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (total_two, 0)
    assert fake.billed[-1]["cache_read_input_tokens"] == total_two


def test_tokens_after_the_last_breakpoint_are_plain_input(fake: FakeUpstream) -> None:
    client = sdk(fake)
    messages = [user("Hello", mark=False)]
    answer = client.messages.create(model=SONNET, max_tokens=64, system=system(),
                                    messages=messages)
    total = counted(client, SONNET, messages, system=system())
    written = answer.usage.cache_creation_input_tokens or 0
    assert 0 < written < total
    assert answer.usage.input_tokens == total - written


def test_another_model_or_another_key_starts_cold(fake: FakeUpstream) -> None:
    messages = [user("Compare these two saws.")]
    warm = sdk(fake).messages.create(model=SONNET, max_tokens=64, system=system(),
                                     messages=messages)
    written = warm.usage.cache_creation_input_tokens
    assert written
    again = sdk(fake).messages.create(model=SONNET, max_tokens=64, system=system(),
                                      messages=messages)
    assert (again.usage.cache_read_input_tokens, again.usage.cache_creation_input_tokens) == (
        written, 0)
    for client, model in ((sdk(fake), OPUS), (sdk(fake, "sk-other-tenant"), SONNET)):
        cold = client.messages.create(model=model, max_tokens=64, system=system(),
                                      messages=messages)
        assert cold.usage.cache_read_input_tokens == 0
        assert cold.usage.cache_creation_input_tokens == written
    # A dated id is the same model: its cache is warm.
    dated = sdk(fake).messages.create(model="claude-haiku-4-5-20251001", max_tokens=64,
                                      system=system(), messages=messages)
    alias = sdk(fake).messages.create(model=HAIKU, max_tokens=64, system=system(),
                                      messages=messages)
    assert alias.usage.cache_read_input_tokens == dated.usage.cache_creation_input_tokens


def test_entries_expire_after_their_ttl_and_a_hit_refreshes_it(fake: FakeUpstream) -> None:
    client = sdk(fake)
    first = [user("Is this glue food-safe?")]

    def send(messages: list[dict[str, Any]]) -> anthropic.types.Message:
        return client.messages.create(model=SONNET, max_tokens=64, messages=messages)

    opening = send(first)
    written = opening.usage.cache_creation_input_tokens
    history = [unmarked(first[0]), {"role": "assistant", "content": content(opening)}]
    advance(fake, 240)
    # Four minutes on, the next turn reads the opening's entry, which restarts its 5 minutes.
    assert send([*history, user("Even for cutting boards?")]).usage.cache_read_input_tokens == (
        written)
    advance(fake, 240)
    # Eight minutes after it was written, a branch of the conversation still finds it.
    assert send([*history, user("And for cups?")]).usage.cache_read_input_tokens == written
    assert fake.cached_prefixes(KEY, SONNET) == 3
    advance(fake, 301)
    assert fake.cached_prefixes(KEY, SONNET) == 0
    expired = send([*history, user("And for cups?")])
    assert expired.usage.cache_read_input_tokens == 0
    assert expired.usage.cache_creation_input_tokens == counted(
        client, SONNET, [*history, user("And for cups?")])


def test_one_hour_and_five_minute_writes_are_split(fake: FakeUpstream) -> None:
    messages = [user("What does the warranty cover?")]
    # The 1h part alone: the same system, breakpoint only there, under another key (cold).
    only_system = sdk(fake, "sk-probe").messages.create(
        model=SONNET, max_tokens=64, system=system("1h"),
        messages=[unmarked(messages[0])])
    system_tokens = only_system.usage.cache_creation_input_tokens
    assert only_system.usage.cache_creation is not None
    assert only_system.usage.cache_creation.ephemeral_1h_input_tokens == system_tokens

    client = sdk(fake)
    both = client.messages.create(model=SONNET, max_tokens=64, system=system("1h"),
                                  messages=messages)
    split = both.usage.cache_creation
    assert split is not None
    assert split.ephemeral_1h_input_tokens == system_tokens
    total = counted(client, SONNET, messages, system=system("1h"))
    assert split.ephemeral_5m_input_tokens == total - (system_tokens or 0) > 0
    assert both.usage.cache_creation_input_tokens == total

    advance(fake, 360)  # the 5-minute entry is gone, the 1-hour one lives
    later = client.messages.create(model=SONNET, max_tokens=64, system=system("1h"),
                                   messages=messages)
    assert later.usage.cache_read_input_tokens == system_tokens
    assert later.usage.cache_creation is not None
    assert later.usage.cache_creation.ephemeral_5m_input_tokens == split.ephemeral_5m_input_tokens
    assert later.usage.cache_creation.ephemeral_1h_input_tokens == 0


@pytest.mark.parametrize(("new_blocks", "hit"), [(19, True), (25, False)])
def test_a_breakpoint_looks_back_twenty_blocks(fake: FakeUpstream, new_blocks: int,
                                               hit: bool) -> None:
    client = sdk(fake)
    first = [user("Start of the log.")]
    client.messages.create(model=SONNET, max_tokens=64, messages=first)
    lines = [{"type": "text", "text": f"log line {i}"} for i in range(new_blocks)]
    lines[-1]["cache_control"] = EPHEMERAL
    reply = {"role": "assistant", "content": [{"type": "text", "text": "ok"}]}
    second = [unmarked(first[0]), reply, {"role": "user", "content": lines}]
    answer = client.messages.create(model=SONNET, max_tokens=64, messages=second)
    assert ((answer.usage.cache_read_input_tokens or 0) > 0) is hit


def test_cache_control_limits(fake: FakeUpstream) -> None:
    marked = [{"type": "text", "text": f"part {i}", "cache_control": EPHEMERAL} for i in range(5)]
    status, error = post(fake, "/v1/messages", {
        "model": SONNET, "max_tokens": 8, "messages": [{"role": "user", "content": marked}]})
    assert status == 400
    assert error["error"]["message"] == (
        "A maximum of 4 blocks with cache_control may be provided. Found 5.")
    bad_ttl = [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "2h"}}]
    status, error = post(fake, "/v1/messages", {
        "model": SONNET, "max_tokens": 8, "messages": [{"role": "user", "content": bad_ttl}]})
    assert (status, error["error"]["message"]) == (
        400, "messages.0.content.0.cache_control.ttl: Input should be '5m' or '1h'")
    assert post(fake, "/_fake/clock", {"advance": -1})[0] == 400


# --------------------------------------------------------------------------- signatures


def thinking_turn(fake: FakeUpstream, model: str, **extra: Any) -> list[dict[str, Any]]:
    """A two-message history whose assistant turn the given model wrote, thinking on."""
    question = {"role": "user", "content": "How many screws per hinge?"}
    answer = sdk(fake).messages.create(
        model=model, max_tokens=4096, messages=[question],
        thinking={"type": "enabled", "budget_tokens": 2048}, **extra)
    assert answer.content[0].type == "thinking"
    return [question, {"role": "assistant", "content": content(answer)}]


def test_thinking_goes_back_only_to_the_model_that_signed_it(fake: FakeUpstream) -> None:
    history = [*thinking_turn(fake, SONNET), {"role": "user", "content": "And per door?"}]
    thinking = {"type": "enabled", "budget_tokens": 2048}
    same = sdk(fake).messages.create(model=SONNET, max_tokens=4096, messages=history,
                                     thinking=thinking)
    assert same.content[0].type == "thinking"
    for model in ("claude-opus-4-5", HAIKU):
        with pytest.raises(anthropic.BadRequestError) as caught:
            sdk(fake).messages.create(model=model, max_tokens=4096, messages=history,
                                      thinking=thinking)
        assert caught.value.type == "invalid_request_error"
        assert caught.value.api_message == (
            "messages.1.content.0: Invalid `signature` in `thinking` block")
    # Without thinking on, a foreign block is still refused; stripped, the history is fine.
    status, _ = post(fake, "/v1/messages", {"model": OPUS, "max_tokens": 64, "messages": history})
    assert status == 400
    stripped = [*history[:1], {"role": "assistant", "content": history[1]["content"][1:]},
                history[2]]
    assert post(fake, "/v1/messages",
                {"model": OPUS, "max_tokens": 64, "messages": stripped})[0] == 200


def test_edited_thinking_and_signatures_from_another_fake_are_refused(
    fake: FakeUpstream, own_fake: FakeUpstream
) -> None:
    history = [*thinking_turn(fake, SONNET), {"role": "user", "content": "Thanks."}]
    edited = json.loads(json.dumps(history))
    edited[1]["content"][0]["thinking"] += " (edited)"
    status, error = post(fake, "/v1/messages", {"model": SONNET, "max_tokens": 64,
                                                "messages": edited})
    assert (status, error["error"]["message"]) == (
        400, "messages.1.content.0: Invalid `signature` in `thinking` block")
    # Only the fake that signed can verify: another process's secret differs.
    assert post(own_fake, "/v1/messages", {"model": SONNET, "max_tokens": 64,
                                           "messages": history})[0] == 400
    # The signature is opaque: the model id is not in it.
    raw = base64.b64decode(history[1]["content"][0]["signature"])
    assert SONNET.encode() not in raw and b"sonnet" not in raw


def test_redacted_thinking_is_bound_to_its_model(fake: FakeUpstream) -> None:
    question = {"role": "user", "content": "Plan the shelf layout. [[reply:redacted]]"}
    answer = sdk(fake).messages.create(model=SONNET, max_tokens=2048, messages=[question],
                                       thinking={"type": "adaptive"})
    blocks = content(answer)
    assert blocks[0]["type"] == "redacted_thinking" and blocks[0]["data"]
    history = [question, {"role": "assistant", "content": blocks},
               {"role": "user", "content": "Go on."}]
    ok = post(fake, "/v1/messages", {"model": SONNET, "max_tokens": 64, "messages": history})
    assert ok[0] == 200
    status, error = post(fake, "/v1/messages", {"model": OPUS, "max_tokens": 64,
                                                "messages": history})
    assert (status, error["error"]["message"]) == (
        400, "messages.1.content.0: Invalid `signature` in `thinking` block")


def tool_loop(fake: FakeUpstream, model: str, thinking: dict[str, Any]) -> list[dict[str, Any]]:
    """A history ending in a tool result, the tool called by ``model`` with thinking on."""
    ask = {"role": "user", "content": "Check the disk. [[reply:tool=Bash]]"}
    called = sdk(fake).messages.create(model=model, max_tokens=4096, messages=[ask],
                                       tools=TOOLS, thinking=thinking)
    assert called.stop_reason == "tool_use"
    blocks = content(called)
    tool_id = blocks[-1]["id"]
    return [ask, {"role": "assistant", "content": blocks},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id,
                                          "content": "12G free"}]}]


def test_enabled_thinking_tool_loop_needs_its_thinking_block(fake: FakeUpstream) -> None:
    enabled = {"type": "enabled", "budget_tokens": 2048}
    history = tool_loop(fake, SONNET, enabled)
    kept = sdk(fake).messages.create(model=SONNET, max_tokens=4096, messages=history,
                                     tools=TOOLS, thinking=enabled)
    assert kept.stop_reason == "end_turn"
    without = [history[0], {"role": "assistant", "content": history[1]["content"][1:]},
               history[2]]
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk(fake).messages.create(model=SONNET, max_tokens=4096, messages=without,
                                  tools=TOOLS, thinking=enabled)
    assert caught.value.api_message == LOOP_RULE
    # Adaptive thinking may skip thinking, and with thinking off the rule does not apply.
    adaptive = sdk(fake).messages.create(model=SONNET, max_tokens=4096, messages=without,
                                         tools=TOOLS, thinking={"type": "adaptive"})
    assert adaptive.content[0].type == "thinking"
    plain = sdk(fake).messages.create(model=SONNET, max_tokens=4096, messages=without,
                                      tools=TOOLS)
    assert [b.type for b in plain.content] == ["text"]


def test_a_new_user_turn_after_a_finished_loop_needs_no_thinking(fake: FakeUpstream) -> None:
    enabled = {"type": "enabled", "budget_tokens": 2048}
    history = [{"role": "user", "content": "hi"},
               {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
               {"role": "user", "content": "Tell me more."}]
    answer = sdk(fake).messages.create(model=HAIKU, max_tokens=4096, messages=history,
                                       thinking=enabled)
    assert [b.type for b in answer.content] == ["thinking", "text"]


def test_adaptive_thinking_and_omitted_display(fake: FakeUpstream) -> None:
    client = sdk(fake)
    shown = client.messages.create(model="claude-opus-4-7", max_tokens=1024,
                                   messages=[{"role": "user", "content": "Why?"}],
                                   thinking={"type": "adaptive"})
    assert shown.content[0].type == "thinking" and shown.content[0].thinking
    hidden = client.messages.create(
        model="claude-opus-4-7", max_tokens=1024, messages=[{"role": "user", "content": "Why?"}],
        thinking={"type": "adaptive", "display": "omitted"})
    block = hidden.content[0]
    assert block.type == "thinking" and block.thinking == "" and block.signature
    history = [{"role": "user", "content": "Why?"},
               {"role": "assistant", "content": content(hidden)},
               {"role": "user", "content": "Go on."}]
    assert post(fake, "/v1/messages", {"model": "claude-opus-4-7", "max_tokens": 64,
                                       "messages": history})[0] == 200
    # Fable always thinks, even when the request does not ask.
    fable = client.messages.create(model="claude-fable-5", max_tokens=1024,
                                   messages=[{"role": "user", "content": "Why?"}])
    assert fable.content[0].type == "thinking"


# --------------------------------------------------------------------------- capabilities


@pytest.mark.parametrize(
    ("model", "extra", "headers", "message"),
    [
        (HAIKU, {"max_tokens": 100000}, {},
         "max_tokens: 100000 > 64000, which is the maximum allowed number of output tokens for "
         "claude-haiku-4-5"),
        ("claude-opus-4-7", {"max_tokens": 200000}, {},
         "max_tokens: 200000 > 128000, which is the maximum allowed number of output tokens "
         "for claude-opus-4-7"),
        ("claude-opus-4-7", {"thinking": {"type": "enabled", "budget_tokens": 2048}}, {},
         '"thinking.type.enabled" is not supported for this model. Use '
         '"thinking.type.adaptive" and "output_config.effort" to control thinking behavior.'),
        (HAIKU, {"thinking": {"type": "adaptive"}}, {},
         "adaptive thinking is not supported on this model"),
        ("claude-fable-5", {"thinking": {"type": "disabled"}}, {},
         '"thinking.type.disabled" is not supported for this model.'),
        (SONNET, {"thinking": {"type": "enabled", "budget_tokens": 512}}, {},
         "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"),
        (SONNET, {"thinking": {"type": "enabled", "budget_tokens": 8192}}, {},
         "`max_tokens` must be greater than `thinking.budget_tokens`"),
        (HAIKU, {"output_config": {"effort": "low"}}, {},
         "output_config.effort: the effort parameter is not supported by claude-haiku-4-5"),
        (SONNET, {"output_config": {"effort": "xhigh"}}, {},
         "output_config.effort: 'xhigh' is not supported by claude-sonnet-4-6; supported "
         "levels: low, medium, high, max"),
        ("claude-opus-4-5-20251101", {"output_config": {"effort": "max"}}, {},
         "output_config.effort: 'max' is not supported by claude-opus-4-5-20251101; "
         "supported levels: low, medium, high"),
        (HAIKU, {}, {"anthropic-beta": "claude-code-20250219,context-1m-2025-08-07"},
         "anthropic-beta: context-1m-2025-08-07 is not supported for claude-haiku-4-5"),
    ],
)
def test_capability_violations_are_400s(fake: FakeUpstream, model: str, extra: dict[str, Any],
                                        headers: dict[str, str], message: str) -> None:
    payload = {"model": model, "max_tokens": 4096,
               "messages": [{"role": "user", "content": "hi"}], **extra}
    status, error = post(fake, "/v1/messages", payload, headers)
    assert (status, error["error"]["type"], error["error"]["message"]) == (
        400, "invalid_request_error", message)
    assert fake.billed == []


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("claude-opus-4-7", {"thinking": {"type": "adaptive"},
                             "output_config": {"effort": "xhigh"}}),
        (OPUS, {"thinking": {"type": "enabled", "budget_tokens": 2048},
                "output_config": {"effort": "max"}}),
        ("claude-haiku-5-5", {"thinking": {"type": "adaptive"}}),
        ("claude-mythos-5-1", {"thinking": {"type": "adaptive"}}),
        (HAIKU, {"max_tokens": 64000, "thinking": {"type": "disabled"}}),
    ],
)
def test_what_a_model_supports_is_served(fake: FakeUpstream, model: str,
                                         extra: dict[str, Any]) -> None:
    payload = {"model": model, "max_tokens": 4096,
               "messages": [{"role": "user", "content": "hi"}], **extra}
    status, answer = post(fake, "/v1/messages", payload,
                          {"anthropic-beta": "interleaved-thinking-2025-05-14,some-future-beta"})
    assert status == 200, answer


def test_context_windows_and_the_1m_beta(fake: FakeUpstream) -> None:
    big = "word " * 170_000  # about 213k tokens by the fake's count
    long_messages = [{"role": "user", "content": big}]
    client = sdk(fake)
    tokens = counted(client, HAIKU, long_messages)
    assert 200_000 < tokens < 1_000_000
    status, error = post(fake, "/v1/messages",
                         {"model": "claude-sonnet-4-5", "max_tokens": 1024,
                          "messages": long_messages})
    assert (status, error["error"]["message"]) == (
        400, f"prompt is too long: {tokens} tokens > 200000 maximum")
    beta = {"anthropic-beta": "context-1m-2025-08-07"}
    assert post(fake, "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 1024,
                                       "messages": long_messages}, beta)[0] == 200
    # Harmless on a model whose window is already 1M.
    assert post(fake, "/v1/messages", {"model": SONNET, "max_tokens": 1024,
                                       "messages": long_messages}, beta)[0] == 200
    # Input that fits, but not with room for max_tokens.
    fits = [{"role": "user", "content": "word " * 140_000}]
    near = counted(client, HAIKU, fits)
    status, error = post(fake, "/v1/messages", {"model": HAIKU, "max_tokens": 64000,
                                                "messages": fits})
    assert (status, error["error"]["message"]) == (
        400, f"input length and `max_tokens` exceed context limit: {near} + 64000 > 200000, "
        "decrease input length or `max_tokens` and try again")


@pytest.mark.parametrize("model", ["claude-made-up-9", "gpt-4o", "claude-opus-4-1-20250805"])
def test_unknown_models_are_404(fake: FakeUpstream, model: str) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        sdk(fake).messages.create(model=model, max_tokens=8,
                                  messages=[{"role": "user", "content": "hi"}])
    assert caught.value.api_message == f"model: {model}"


# --------------------------------------------------------------------------- directives


def test_tool_and_words_directives_stream_and_not(fake: FakeUpstream) -> None:
    client = sdk(fake)
    messages = [{"role": "user", "content": "Free space? [[reply:tool=Bash,words=8]]"}]
    plain = client.messages.create(model=SONNET, max_tokens=512, messages=messages,
                                   tools=TOOLS)
    with client.messages.stream(model=SONNET, max_tokens=512, messages=messages,
                                tools=TOOLS) as stream:
        streamed = stream.get_final_message()
    for answer in (plain, streamed):
        assert answer.stop_reason == "tool_use"
        text, call = answer.content
        assert text.type == "text" and len(text.text.split()) == 8
        assert call.type == "tool_use" and call.name == "Bash"
        assert isinstance(call.input, dict) and isinstance(call.input["command"], str)
        assert set(call.input) == {"command"}  # only what the schema requires
    assert content(plain) == content(streamed)


def test_directive_in_a_tool_result_and_schema_values(fake: FakeUpstream) -> None:
    messages = [
        {"role": "user", "content": "Find the bracket."},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Bash",
                                           "input": {"command": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text":
                                                   "shelf.txt [[reply:tool=Lookup]]"}]}]},
    ]
    answer = sdk(fake).messages.create(model=HAIKU, max_tokens=512, messages=messages,
                                       tools=TOOLS)
    call = answer.content[-1]
    assert call.type == "tool_use" and call.name == "Lookup"
    assert call.input == {"sku": "A-1", "count": 1, "tags": ["example tags"]}
    # Only the latest user turn counts: the next plain question is answered in text.
    follow = [*messages, {"role": "assistant", "content": content(answer)},
              {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                            "content": "A-1: 3 left"}]}]
    done = sdk(fake).messages.create(model=HAIKU, max_tokens=512, messages=follow,
                                     tools=TOOLS)
    assert done.stop_reason == "end_turn" and [b.type for b in done.content] == ["text"]


def test_a_scripted_reply_wins_over_directives(fake: FakeUpstream) -> None:
    fake.script(Reply(text="Scripted.", thinking=""))
    answer = sdk(fake).messages.create(
        model=SONNET, max_tokens=4096, thinking={"type": "adaptive"}, tools=TOOLS,
        messages=[{"role": "user", "content": "[[reply:tool=Bash,words=50]]"}])
    assert [b.type for b in answer.content] == ["text", "tool_use"]
    assert answer.content[0].text == "Scripted."


# --------------------------------------------------------------------------- models endpoint


def test_models_endpoint_serves_the_capability_table(fake: FakeUpstream) -> None:
    client = sdk(fake)
    listed = {m.id: m for m in client.models.list(limit=1000)}
    assert set(listed) == {spec.id for spec in CATALOGUE}
    haiku = client.models.retrieve("claude-haiku-4-5-20251001")
    assert (haiku.id, haiku.max_input_tokens, haiku.max_tokens) == (HAIKU, 200_000, 64_000)
    assert haiku.capabilities is not None
    types = haiku.capabilities.thinking.types
    assert (types.enabled.supported, types.adaptive.supported) == (True, False)
    assert haiku.capabilities.effort.supported is False
    opus = listed["claude-opus-4-7"].capabilities
    assert opus is not None
    assert (opus.thinking.types.enabled.supported, opus.thinking.types.adaptive.supported) == (
        False, True)
    assert opus.effort.xhigh is not None and opus.effort.xhigh.supported
    sonnet = listed[SONNET]
    assert (sonnet.max_input_tokens, sonnet.max_tokens) == (1_000_000, 128_000)
    assert sonnet.capabilities is not None and sonnet.capabilities.effort.max.supported
    assert sonnet.capabilities.effort.xhigh is not None
    assert not sonnet.capabilities.effort.xhigh.supported
    fable = listed["claude-fable-5-1"].capabilities
    assert fable is not None and not fable.thinking.types.disabled.supported
    opus45 = listed["claude-opus-4-5"].capabilities
    assert opus45 is not None and opus45.effort.high.supported
    assert not opus45.effort.max.supported
