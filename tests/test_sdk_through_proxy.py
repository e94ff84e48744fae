"""The official SDK cannot tell the proxy from the API: same content, usage, events, errors."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest

from router.fake import Fail, FakeUpstream, Reply, StreamError
from tests.conftest import API_KEY, make_policy

PROMPT = [{"role": "user", "content": "Say hello."}]

# (auth style, API version): the new SDK sends Bearer + 2026-10-21, the old ones x-api-key +
# 2023-06-01; gateways see every mix.
AUTH_VERSIONS = [
    ("bearer", "2026-10-21"),
    ("x-api-key", "2023-06-01"),
    ("bearer", "2023-06-01"),
    ("x-api-key", "2026-10-21"),
]


def client_kwargs(base_url: str, auth: str, version: str) -> dict[str, Any]:
    headers = {"anthropic-version": version}
    if auth == "x-api-key":
        headers["X-Api-Key"] = API_KEY
        return {"base_url": base_url, "api_key": None, "default_headers": headers,
                "max_retries": 0}
    return {"base_url": base_url, "api_key": API_KEY, "default_headers": headers,
            "max_retries": 0}


def sync_client(base_url: str, auth: str = "bearer", version: str = "2026-10-21"
                ) -> anthropic.Anthropic:
    return anthropic.Anthropic(**client_kwargs(base_url, auth, version))


def comparable(message: anthropic.types.Message) -> dict[str, Any]:
    """A message minus its random id."""
    data = message.model_dump()
    data.pop("id")
    return data


@pytest.mark.parametrize(("auth", "version"), AUTH_VERSIONS)
def test_create_matches_direct(fake: FakeUpstream, proxy_url: str, auth: str, version: str
                               ) -> None:
    direct = sync_client(fake.url, auth, version).messages.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=PROMPT
    )
    raw = sync_client(proxy_url, auth, version).messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=64, messages=PROMPT
    )
    proxied = raw.parse()
    assert comparable(proxied) == comparable(direct)
    assert proxied.usage.input_tokens > 0
    assert raw.headers["x-router-model"] == "claude-sonnet-4-6"
    assert raw.headers["x-router-tier"] == "sonnet"
    assert raw.headers["request-id"].startswith("req_")
    assert proxied._request_id == raw.headers["request-id"]
    # The request reached the upstream as the client sent it: same body, same auth, same version.
    sent_direct, sent_proxied = fake.received[-2], fake.received[-1]
    assert sent_proxied.body == sent_direct.body
    for name in ("anthropic-version", "x-api-key", "authorization", "user-agent",
                 "x-stainless-lang", "x-stainless-package-version"):
        assert sent_proxied.header(name) == sent_direct.header(name), name
    assert sent_proxied.header("anthropic-version") == version


def test_stream_events_match_direct(fake: FakeUpstream, proxy_url: str) -> None:
    def events(base_url: str) -> tuple[list[dict[str, Any]], anthropic.types.Message]:
        fake.script(Reply(text="one two three four five six seven", thinking="Let me think."))
        with sync_client(base_url).messages.stream(
            model="claude-opus-4-7", max_tokens=64, messages=PROMPT
        ) as stream:
            seen = [e.model_dump() for e in stream]
            return seen, stream.get_final_message()

    direct_events, direct_final = events(fake.url)
    proxied_events, proxied_final = events(proxy_url)
    for e in direct_events + proxied_events:
        if e["type"] == "message_start":
            e["message"].pop("id")
        e.pop("snapshot", None)
        e.pop("message", None) if e["type"] == "message_stop" else None
    assert proxied_events == direct_events
    assert comparable(proxied_final) == comparable(direct_final)
    assert proxied_final.usage.output_tokens == direct_final.usage.output_tokens > 0
    assert [b.type for b in proxied_final.content] == ["thinking", "text"]


def test_async_client_and_tool_use(fake: FakeUpstream, proxy_url: str) -> None:
    async def run() -> anthropic.types.Message:
        fake.script(Reply(tool_use={"name": "get_weather", "input": {"city": "Paris"}}))
        async with anthropic.AsyncAnthropic(base_url=proxy_url, api_key=API_KEY,
                                            max_retries=0) as client:
            return await client.messages.create(
                model="claude-haiku-4-5",
                max_tokens=64,
                messages=PROMPT,
                tools=[{"name": "get_weather", "description": "Weather for a city",
                        "input_schema": {"type": "object",
                                         "properties": {"city": {"type": "string"}}}}],
            )

    message = asyncio.run(run())
    assert message.stop_reason == "tool_use"
    tool = next(b for b in message.content if b.type == "tool_use")
    assert tool.name == "get_weather"
    assert tool.input == {"city": "Paris"}


def test_async_stream(fake: FakeUpstream, proxy_url: str) -> None:
    async def run() -> tuple[str, anthropic.types.Message]:
        fake.script(Reply(text="streamed through the proxy"))
        async with anthropic.AsyncAnthropic(base_url=proxy_url, api_key=API_KEY,
                                            max_retries=0) as client, client.messages.stream(
            model="claude-sonnet-4-6", max_tokens=64, messages=PROMPT
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            return text, await stream.get_final_message()

    text, final = asyncio.run(run())
    assert text == "streamed through the proxy"
    assert final.usage.input_tokens == fake.billed[-1]["input_tokens"]
    assert final.usage.output_tokens == fake.billed[-1]["output_tokens"]


def test_count_tokens_and_models(fake: FakeUpstream, proxy_url: str) -> None:
    direct, proxied = sync_client(fake.url), sync_client(proxy_url)
    counted = proxied.messages.count_tokens(model="claude-sonnet-4-6", messages=PROMPT)
    assert counted.input_tokens == direct.messages.count_tokens(
        model="claude-sonnet-4-6", messages=PROMPT
    ).input_tokens
    assert fake.received[-1].path == "/v1/messages/count_tokens"
    # Auto-pagination across several pages, through the proxy.
    via_proxy = [m.id for m in proxied.models.list(limit=3)]
    assert via_proxy == [m.id for m in direct.models.list(limit=3)]
    assert "claude-opus-4-7" in via_proxy
    assert proxied.models.retrieve("claude-haiku-4-5").id == "claude-haiku-4-5"


@pytest.mark.parametrize(
    ("fail", "exc_class"),
    [
        (Fail(529, "overloaded_error"), anthropic.InternalServerError),
        (Fail(429, "rate_limit_error", headers={"retry-after": "7"}), anthropic.RateLimitError),
        (Fail(500, "api_error"), anthropic.InternalServerError),
        (Fail(400, "invalid_request_error", "prompt is too long"), anthropic.BadRequestError),
        (Fail(403, "permission_error"), anthropic.PermissionDeniedError),
    ],
)
def test_upstream_errors_pass_through(fake: FakeUpstream, proxy_url: str, fail: Fail,
                                      exc_class: type[Exception]) -> None:
    caught: list[anthropic.APIStatusError] = []
    for url in (fake.url, proxy_url):
        fake.script(fail)
        with pytest.raises(exc_class) as info:
            sync_client(url).messages.create(model="claude-sonnet-4-6", max_tokens=8,
                                             messages=PROMPT)
        assert isinstance(info.value, anthropic.APIStatusError)
        caught.append(info.value)
    direct, proxied = caught
    assert type(proxied) is type(direct)
    assert proxied.status_code == direct.status_code == fail.status
    assert proxied.request_id and proxied.request_id.startswith("req_")
    assert proxied.body["error"]["type"] == fail.error_type  # type: ignore[index]
    assert proxied.body["error"]["message"] == direct.body["error"]["message"]  # type: ignore[index]
    for name, value in fail.headers.items():
        assert proxied.response.headers[name] == value


def test_mid_stream_error_event_passes_through(fake: FakeUpstream, proxy_url: str) -> None:
    fake.script(StreamError(after_events=4, error_type="overloaded_error"))
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info, sync_client(proxy_url).messages.stream(
        model="claude-sonnet-4-6", max_tokens=64, messages=PROMPT
    ) as stream:
        for event in stream:
            received.append(event.type)
    assert info.value.type == "overloaded_error"  # type: ignore[attr-defined]
    assert received[0] == "message_start"


def test_sdk_retries_proxy_502_when_upstream_is_down(start_proxy: Any) -> None:
    url = start_proxy(policy=make_policy("http://127.0.0.1:9"))
    client = anthropic.Anthropic(base_url=url, api_key=API_KEY, max_retries=1)
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model="claude-sonnet-4-6", max_tokens=8, messages=PROMPT)
    assert info.value.status_code == 502
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert API_KEY not in str(info.value.body)
