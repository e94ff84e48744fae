"""Proves the fake upstream is faithful to the wire spec, using the official SDK and raw HTTP."""

from __future__ import annotations

import http.client
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anthropic
import pytest

from router.fake import (
    Drop,
    Fail,
    FakeUpstream,
    Malformed,
    Reply,
    Stall,
    StreamError,
    estimate_input_tokens,
    running_fake,
)
from tests import procs

MODEL = "claude-sonnet-4-6"
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "Hello there"}]
REQUEST_ID = re.compile(r"^req_[0-9A-Za-z]{24}$")
EVENT_BLOCK = re.compile(rb"event: ([a-z_]+)\ndata: ([^\n]*)\n\n")
USAGE_KEYS = {
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation",
    "server_tool_use",
    "service_tier",
    "inference_geo",
    "output_tokens_details",
}
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake() -> Iterator[FakeUpstream]:
    with running_fake() as server:
        yield server


def sdk(fake: FakeUpstream, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.url, api_key="sk-test", max_retries=0, **kwargs)


def raw(
    fake: FakeUpstream,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> http.client.HTTPResponse:
    """Sends one request with exactly the given headers; the caller reads the response."""
    parts = urlsplit(fake.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    payload = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    all_headers = {"content-type": "application/json"}
    all_headers.update(headers or {})
    conn.request(method, path, body=payload, headers=all_headers)
    return conn.getresponse()


def good_headers(version: str = "2023-06-01") -> dict[str, str]:
    return {"x-api-key": "sk-test", "anthropic-version": version}


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 256, "messages": MESSAGES, **extra}


def collect_stream(fake: FakeUpstream, into: list[str]) -> None:
    """Streams one default request with the SDK, appending event types as they arrive."""
    with sdk(fake).messages.stream(model=MODEL, max_tokens=64, messages=MESSAGES) as stream:
        into.extend(event.type for event in stream)


def dump_blocks(blocks: Any) -> list[dict[str, Any]]:
    """Block dicts without the stream helper's extra ``parsed_output`` field."""
    return [
        {k: v for k, v in block.model_dump().items() if k != "parsed_output"} for block in blocks
    ]


def parse_sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Splits an SSE body into (event, data) pairs, asserting nothing is left over."""
    blocks = EVENT_BLOCK.findall(data)
    assert b"".join(b"event: %s\ndata: %s\n\n" % pair for pair in blocks) == data
    return [(name.decode(), json.loads(payload)) for name, payload in blocks]


# --------------------------------------------------------------------------- success paths


def test_create_returns_message_with_full_usage(fake: FakeUpstream) -> None:
    raw_response = sdk(fake).messages.with_raw_response.create(
        model=MODEL, max_tokens=256, messages=MESSAGES
    )
    message = raw_response.parse()
    assert message.id.startswith("msg_")
    assert message.model == MODEL
    assert message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == f"Hello from {MODEL}."  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert usage.input_tokens == estimate_input_tokens(body()) > 0
    assert usage.output_tokens > 0
    assert usage.cache_creation is not None and usage.server_tool_use is not None
    assert usage.service_tier == "standard" and usage.inference_geo == "global"
    assert usage.output_tokens_details is not None

    assert REQUEST_ID.match(raw_response.headers["request-id"])
    assert message._request_id == raw_response.headers["request-id"]
    assert raw_response.headers["anthropic-organization-id"]
    assert int(raw_response.headers["anthropic-ratelimit-requests-limit"]) > 0
    assert re.match(
        r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$",
        raw_response.headers["anthropic-ratelimit-tokens-reset"],
    )

    [seen] = fake.received
    assert (seen.method, seen.path, seen.query) == ("POST", "/v1/messages", "")
    assert seen.header("AUTHORIZATION") == "Bearer sk-test"
    assert seen.header("anthropic-version") == "2026-10-21"
    assert seen.json()["max_tokens"] == 256
    assert fake.billed == [raw_response.http_response.json()["usage"]]
    assert set(fake.billed[0]) == USAGE_KEYS


def test_stream_yields_text_and_same_usage_as_non_stream(fake: FakeUpstream) -> None:
    client = sdk(fake)
    fake.script(Reply(text="One two three four"), Reply(text="One two three four"))
    plain = client.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES)
    with client.messages.stream(model=MODEL, max_tokens=256, messages=MESSAGES) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1
    assert "".join(pieces) == "One two three four"
    assert dump_blocks(final.content) == dump_blocks(plain.content)
    assert final.usage == plain.usage
    assert final.usage.output_tokens > 1
    assert fake.billed[0] == fake.billed[1] == plain.usage.model_dump(exclude_none=True)


def test_usage_override_is_merged_and_identical_in_both_modes(fake: FakeUpstream) -> None:
    client = sdk(fake)
    override = {
        "cache_creation_input_tokens": 40,
        "cache_read_input_tokens": 900,
        "server_tool_use": {"web_search_requests": 2},
        "output_tokens": 77,
    }
    fake.script(Reply(usage=override), Reply(usage=override))
    plain = client.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES)
    with client.messages.stream(model=MODEL, max_tokens=256, messages=MESSAGES) as stream:
        final = stream.get_final_message()
    assert final.usage == plain.usage
    usage = plain.usage
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (40, 900)
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == 40
    assert usage.server_tool_use is not None
    assert usage.server_tool_use.web_search_requests == 2
    assert usage.server_tool_use.web_fetch_requests == 0
    assert usage.output_tokens == 77


def test_tool_use_and_thinking_blocks_parse(fake: FakeUpstream) -> None:
    client = sdk(fake)
    reply = Reply(
        text="Let me check.",
        thinking="The user wants the weather in Paris.",
        tool_use={"name": "get_weather", "input": {"city": "Paris", "days": [1, 2]}},
    )
    fake.script(reply, reply)
    plain = client.messages.create(model=MODEL, max_tokens=256, messages=MESSAGES)
    with client.messages.stream(model=MODEL, max_tokens=256, messages=MESSAGES) as stream:
        final = stream.get_final_message()
    assert [b.type for b in plain.content] == ["thinking", "text", "tool_use"]
    thinking, _, tool = plain.content
    assert thinking.type == "thinking" and thinking.signature
    assert tool.type == "tool_use" and tool.id.startswith("toolu_")
    assert (tool.name, tool.input) == ("get_weather", {"city": "Paris", "days": [1, 2]})
    assert plain.stop_reason == final.stop_reason == "tool_use"
    assert dump_blocks(final.content) == dump_blocks(plain.content)
    assert final.usage == plain.usage
    assert plain.usage.output_tokens_details is not None
    assert plain.usage.output_tokens_details.thinking_tokens > 0


def test_count_tokens_matches_message_input_tokens(fake: FakeUpstream) -> None:
    client = sdk(fake)
    system = "You are terse."
    counted = client.messages.count_tokens(model=MODEL, messages=MESSAGES, system=system)
    message = client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES, system=system)
    assert counted.input_tokens == message.usage.input_tokens
    assert fake.received[0].path == "/v1/messages/count_tokens"
    assert fake.billed == [message.usage.model_dump(exclude_none=True)]


def test_models_list_auto_paginates_and_retrieve(fake: FakeUpstream) -> None:
    client = sdk(fake)
    first_page = client.models.list(limit=3)
    assert len(first_page.data) == 3 and first_page.has_more
    assert first_page.first_id == first_page.data[0].id
    assert first_page.last_id == first_page.data[-1].id
    ids = [model.id for model in client.models.list(limit=3)]
    assert len(ids) == len(set(ids)) >= 8
    assert {"claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"} <= set(ids)
    everything = client.models.list(limit=1000)
    assert [m.id for m in everything.data] == ids and not everything.has_more
    created = [m.created_at for m in everything.data]
    assert created == sorted(created, reverse=True)
    cursors = [r.query for r in fake.received if r.path == "/v1/models"]
    assert "after_id=" + first_page.data[-1].id in cursors[2]

    backwards = client.models.list(limit=2, before_id=ids[4])
    assert [m.id for m in backwards.data] == ids[2:4] and backwards.has_more

    info = client.models.retrieve("claude-opus-4-7")
    assert info.type == "model" and info.display_name == "Claude Opus 4.7"
    assert info.capabilities is not None and info.max_input_tokens
    assert client.models.retrieve("claude-haiku-4-5-20251001").id == "claude-haiku-4-5"
    with pytest.raises(anthropic.NotFoundError):
        client.models.retrieve("claude-nope-1")
    bad = raw(fake, "GET", "/v1/models?limit=0", headers=good_headers())
    assert bad.status == 400


# --------------------------------------------------------------------------- scripted failures


def test_fail_529_raises_overloaded_with_request_id(fake: FakeUpstream) -> None:
    fake.script(Fail(529, "overloaded_error"))
    with pytest.raises(anthropic.InternalServerError) as caught:
        sdk(fake).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    error = caught.value
    assert isinstance(error, anthropic.OverloadedError)
    assert error.status_code == 529
    assert error.request_id is not None and REQUEST_ID.match(error.request_id)
    assert error.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": error.request_id,
    }
    assert (error.type, error.api_message) == ("overloaded_error", "Overloaded")
    assert fake.billed == []
    # The queue was consumed: the next request gets the default reply.
    assert sdk(fake).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES).content


def test_fail_429_retry_after_and_header_overrides(fake: FakeUpstream) -> None:
    fake.script(
        Fail(429, "rate_limit_error"),
        Fail(429, "rate_limit_error", "spend cap", headers={"retry-after": "", "x-extra": "1"}),
    )
    with pytest.raises(anthropic.RateLimitError) as caught:
        sdk(fake).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "1"
    response = raw(fake, "POST", "/v1/messages", body(), good_headers())
    assert response.status == 429
    assert response.getheader("retry-after") is None
    assert response.getheader("x-extra") == "1"
    payload = response.read()
    assert (
        payload
        == json.dumps(
            {
                "type": "error",
                "error": {"type": "rate_limit_error", "message": "spend cap"},
                "request_id": response.getheader("request-id"),
            },
            separators=(",", ":"),
        ).encode()
    )


def test_fail_x_should_retry_is_obeyed_by_sdk(fake: FakeUpstream) -> None:
    fake.script(
        Fail(
            400, "invalid_request_error", headers={"x-should-retry": "true", "retry-after-ms": "1"}
        )
    )
    client = anthropic.Anthropic(base_url=fake.url, api_key="sk-test", max_retries=1)
    message = client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert message.content
    assert [r.header("x-stainless-retry-count") for r in fake.received] == ["0", "1"]


def test_stream_error_mid_stream_and_billed(fake: FakeUpstream) -> None:
    fake.script(StreamError(after_events=5))
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        collect_stream(fake, seen)
    assert caught.value.type == "overloaded_error"
    assert caught.value.status_code == 200
    assert "message_start" in seen and "message_stop" not in seen
    # Cut before message_delta: billed is message_start's usage (input side, output 1).
    [billed] = fake.billed
    assert billed["output_tokens"] == 1
    assert billed["input_tokens"] == estimate_input_tokens(body())
    assert "output_tokens_details" not in billed


def test_stream_error_after_message_delta_bills_full_usage(fake: FakeUpstream) -> None:
    client = sdk(fake)
    full = client.messages.create(model=MODEL, max_tokens=64, messages=MESSAGES).usage
    response = raw(fake, "POST", "/v1/messages", body(stream=True), good_headers())
    events = parse_sse(response.read())
    delta_at = [name for name, _ in events].index("message_delta")
    fake.clear()
    fake.script(StreamError(after_events=delta_at + 1, error_type="api_error", message="boom"))
    response = raw(fake, "POST", "/v1/messages", body(stream=True), good_headers())
    events = parse_sse(response.read())
    assert events[-1] == (
        "error",
        {
            "type": "error",
            "error": {"type": "api_error", "message": "boom"},
            "request_id": response.getheader("request-id"),
        },
    )
    assert [name for name, _ in events][-2] == "message_delta"
    assert fake.billed == [full.model_dump(exclude_none=True)]


def test_stream_error_on_non_stream_request_is_http_error(fake: FakeUpstream) -> None:
    fake.script(StreamError(after_events=3))
    with pytest.raises(anthropic.OverloadedError):
        sdk(fake).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)


def test_drop_raises_connection_error(fake: FakeUpstream) -> None:
    fake.script(Drop(), Drop(after_events=0))
    for _ in range(2):
        with pytest.raises(anthropic.APIConnectionError):
            sdk(fake).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert len(fake.received) == 2
    assert fake.billed == []


def test_drop_mid_stream_cuts_the_chunked_body(fake: FakeUpstream) -> None:
    fake.script(Drop(after_events=3))
    response = raw(fake, "POST", "/v1/messages", body(stream=True), good_headers())
    assert response.status == 200
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        response.read()
    [billed] = fake.billed
    assert billed["output_tokens"] == 1

    fake.script(Drop(after_events=4))
    got: list[str] = []
    with pytest.raises(Exception) as caught:
        collect_stream(fake, got)
    assert not isinstance(caught.value, anthropic.APIStatusError)
    assert got[:2] == ["message_start", "content_block_start"]


def test_stall_then_timeout_and_stall_then_fail(fake: FakeUpstream) -> None:
    fake.script(Stall(0.5), Stall(0.05, then=Fail(503, "api_error")))
    with pytest.raises(anthropic.APITimeoutError):
        sdk(fake, timeout=0.1).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    started = time.monotonic()
    with pytest.raises(anthropic.InternalServerError) as caught:
        sdk(fake).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
    assert caught.value.status_code == 503
    assert time.monotonic() - started >= 0.05


def test_malformed_body_is_sent_verbatim(fake: FakeUpstream) -> None:
    fake.script(Malformed(b"{not json", status=502, content_type="text/html"))
    response = raw(fake, "POST", "/v1/messages", body(), good_headers())
    assert response.status == 502
    assert response.getheader("content-type") == "text/html"
    assert REQUEST_ID.match(response.getheader("request-id") or "")
    assert response.read() == b"{not json"


# --------------------------------------------------------------------------- validation


def test_auth_rules() -> None:
    with running_fake(api_keys={"sk-good"}) as fake:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            sdk(fake).messages.create(model=MODEL, max_tokens=64, messages=MESSAGES)
        assert caught.value.body == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "invalid x-api-key"},
            "request_id": caught.value.request_id,
        }
        version = {"anthropic-version": "2023-06-01"}
        missing = raw(fake, "POST", "/v1/messages", body(), version)
        assert missing.status == 401
        both_ok = {**version, "x-api-key": "sk-good", "authorization": "Bearer sk-bad"}
        assert raw(fake, "POST", "/v1/messages", body(), both_ok).status == 200
        both_bad = {**version, "x-api-key": "sk-bad", "authorization": "Bearer sk-good"}
        assert raw(fake, "POST", "/v1/messages", body(), both_bad).status == 401
        bearer = {**version, "Authorization": "Bearer sk-good"}
        assert raw(fake, "POST", "/v1/messages", body(), bearer).status == 200
        # Rejected requests are still recorded, before validation.
        assert len(fake.received) == 5


def test_versions_and_removed_sampling_params(fake: FakeUpstream) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk(fake).messages.create(
            model=MODEL, max_tokens=64, messages=MESSAGES, extra_body={"temperature": 0.5}
        )
    assert caught.value.api_message == "temperature: Extra inputs are not permitted"
    assert caught.value.type == "invalid_request_error"
    assert fake.billed == []
    old = sdk(fake, default_headers={"anthropic-version": "2023-06-01"})
    kept = old.messages.create(
        model=MODEL, max_tokens=64, messages=MESSAGES, extra_body={"top_k": 5}
    )
    assert kept.content
    for headers in ({"x-api-key": "k"}, {"x-api-key": "k", "anthropic-version": "2024-01-01"}):
        response = raw(fake, "POST", "/v1/messages", body(), headers)
        assert response.status == 400
        assert json.loads(response.read())["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"model": MODEL, "messages": MESSAGES}, 400, "max_tokens: Field required"),
        ({"max_tokens": 5, "messages": MESSAGES}, 400, "model: Field required"),
        ({"model": MODEL, "max_tokens": 5}, 400, "messages: Field required"),
        (
            {"model": MODEL, "max_tokens": "5", "messages": MESSAGES},
            400,
            "max_tokens: Input should be a valid integer",
        ),
        ({"model": "gpt-4o", "max_tokens": 5, "messages": MESSAGES}, 404, "model: gpt-4o"),
        (b"{oops", 400, "There was an error parsing the body of your request"),
    ],
)
def test_body_validation(fake: FakeUpstream, payload: Any, status: int, message: str) -> None:
    response = raw(fake, "POST", "/v1/messages", payload, good_headers())
    assert response.status == status
    error = json.loads(response.read())
    assert error["error"]["message"] == message
    expected_type = "not_found_error" if status == 404 else "invalid_request_error"
    assert error["error"]["type"] == expected_type
    assert REQUEST_ID.match(error["request_id"])


def test_count_tokens_needs_no_max_tokens_but_checks_the_rest(fake: FakeUpstream) -> None:
    path = "/v1/messages/count_tokens"
    ok = raw(fake, "POST", path, {"model": MODEL, "messages": MESSAGES}, good_headers())
    assert json.loads(ok.read()) == {"input_tokens": estimate_input_tokens({"messages": MESSAGES})}
    assert raw(fake, "POST", path, {"model": MODEL}, good_headers()).status == 400
    assert raw(fake, "POST", path, {"model": MODEL, "messages": MESSAGES}, {}).status == 401


def test_unknown_path_and_beta_query(fake: FakeUpstream) -> None:
    response = raw(fake, "GET", "/v1/nothing", headers=good_headers())
    assert response.status == 404
    assert json.loads(response.read())["error"]["type"] == "not_found_error"
    headers = {**good_headers(), "X-Stainless-Lang": "python", "anthropic-beta": "a,b"}
    response = raw(fake, "POST", "/v1/messages?beta=true", body(), headers)
    assert response.status == 200
    seen = fake.received[-1]
    assert (seen.path, seen.query) == ("/v1/messages", "beta=true")
    assert ("X-Stainless-Lang", "python") in seen.headers
    assert seen.header("ANTHROPIC-BETA") == "a,b"
    fake.clear()
    assert fake.received == [] and fake.billed == []


# --------------------------------------------------------------------------- raw SSE bytes


def test_stream_has_exact_framing(fake: FakeUpstream) -> None:
    fake.script(
        Reply(text="Hello there friend", tool_use={"name": "t", "input": {"a": "bcdefghijk"}})
    )
    response = raw(fake, "POST", "/v1/messages", body(stream=True), good_headers())
    assert response.status == 200
    assert response.getheader("content-type") == "text/event-stream; charset=utf-8"
    assert response.getheader("cache-control") == "no-cache"
    assert response.getheader("transfer-encoding") == "chunked"
    assert REQUEST_ID.match(response.getheader("request-id") or "")
    assert response.getheader("anthropic-ratelimit-tokens-remaining")
    data = response.read()
    assert b"[DONE]" not in data
    assert b'event: ping\ndata: {"type": "ping"}\n\n' in data
    events = parse_sse(data)
    names = [name for name, _ in events]
    assert all(payload["type"] == name for name, payload in events)
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("ping") == 1
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert start["usage"]["output_tokens"] == 1
    json_parts = [
        p["delta"]["partial_json"]
        for n, p in events
        if n == "content_block_delta" and p["delta"]["type"] == "input_json_delta"
    ]
    assert json_parts[0] == "" and len(json_parts) > 2
    assert json.loads("".join(json_parts)) == {"a": "bcdefghijk"}
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "tool_use"
    assert {"input_tokens", "output_tokens", "cache_read_input_tokens"} <= set(delta["usage"])


def test_padded_json_and_periodic_pings() -> None:
    with running_fake(ping_every=2) as fake:
        fake.script(Reply(pad_json=True))
        data = raw(fake, "POST", "/v1/messages", body(stream=True), good_headers()).read()
        assert b'"index":0  }' in data
        events = parse_sse(data)
        names = [name for name, _ in events]
        assert names.count("ping") >= 3
        assert names[-1] == "message_stop"
        for previous, current in itertools.pairwise(names):
            assert not (previous == current == "ping")


def test_events_are_flushed_one_by_one(fake: FakeUpstream) -> None:
    delay = 0.15
    fake.script(Reply(text="a b c", event_delay=delay))
    started = time.monotonic()
    response = raw(fake, "POST", "/v1/messages", body(stream=True), good_headers())
    first = b""
    while not first.endswith(b"\n\n"):
        first += response.readline()
    first_at = time.monotonic() - started
    rest = response.read()
    total = time.monotonic() - started
    assert first.startswith(b"event: message_start\n")
    events = 1 + len(parse_sse(rest))
    assert first_at < delay
    assert total >= delay * (events - 1) * 0.9


# --------------------------------------------------------------------------- CLI


def test_module_main_prints_url_and_serves() -> None:
    args = procs.python_module("router.fake", "--host", "127.0.0.1", "--port", "0")
    listening = r"listening on (http://127\.0\.0\.1:\d+)\n"
    with procs.started(args, ready=procs.log_matches(listening), cwd=ROOT, inherit_env=False,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}) as fake:
        match = re.search(listening, fake.output())
        assert match, fake.output()
        client = anthropic.Anthropic(base_url=match.group(1), api_key="k", max_retries=0)
        assert client.messages.create(model=MODEL, max_tokens=8, messages=MESSAGES).content
        assert fake.stop(5) == 0
