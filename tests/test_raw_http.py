"""Raw HTTP through the proxy: bytes, headers and timing as a byte-level client sees them."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from router.fake import Drop, Fail, FakeUpstream, Reply, Stall
from tests.conftest import API_KEY, make_policy, post, without_retries

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 32,
        "messages": [{"role": "user", "content": "hi"}]}


def as_json(data: bytes) -> Any:
    return json.loads(data)


def test_streamed_bytes_equal_what_upstream_sent(fake: FakeUpstream, proxy_url: str) -> None:
    fake.script(Reply(text="padded stream, byte for byte", pad_json=True, thinking="hmm"))
    body = json.dumps({**BODY, "stream": True}).encode()
    status, headers, data = post(proxy_url, body)
    assert status == 200
    assert data == fake.sent[-1]
    assert b"[DONE]" not in data
    assert headers["content-type"].startswith("text/event-stream")
    assert "no-transform" in headers["cache-control"]
    assert headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in headers
    assert headers["x-router-model"] == "claude-sonnet-4-6"


def test_json_bytes_equal_what_upstream_sent(fake: FakeUpstream, proxy_url: str) -> None:
    status, headers, data = post(proxy_url, json.dumps(BODY).encode())
    assert status == 200
    assert data == fake.sent[-1]
    assert headers["content-length"] == str(len(data))


def test_first_event_is_not_buffered(fake: FakeUpstream, proxy_url: str) -> None:
    delay = 0.5
    fake.script(Reply(text="a b c", event_delay=delay))
    parts = urlsplit(proxy_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    started = time.perf_counter()
    conn.request("POST", "/v1/messages", body=json.dumps({**BODY, "stream": True}).encode(),
                 headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"})
    response = conn.getresponse()
    first = b""
    while b"\n\n" not in first:
        first += response.read1(65536)
    first_at = time.perf_counter() - started
    rest = response.read()
    total = time.perf_counter() - started
    conn.close()
    assert first.startswith(b"event: message_start\n")
    # The upstream waits `delay` before its second event: the first one must be here before.
    assert first_at < delay, first_at
    assert total > 3 * delay
    assert rest.rstrip().endswith(b'data: {"type":"message_stop"}')


def test_body_is_forwarded_untouched_but_for_the_model(fake: FakeUpstream, proxy_url: str
                                                       ) -> None:
    # Odd spacing, a unicode escape and fields the proxy has never heard of all survive.
    body = (b'{ "max_tokens" : 16,\n "messages":[{"role":"user","content":"caf\\u00e9"}],'
            b' "future_field": {"x": [1, 2.50, null]},  "model" : "haiku",'
            b' "metadata": {"user_id": "u-1"} }')
    status, headers, _ = post(proxy_url, body)
    assert status == 200
    assert headers["x-router-model"] == "claude-haiku-4-5"
    assert headers["x-router-tier"] == "haiku"
    assert fake.received[-1].body == body.replace(b'"haiku"', b'"claude-haiku-4-5"')


def test_nested_model_key_is_left_alone(fake: FakeUpstream, proxy_url: str) -> None:
    body = {"model": "haiku", "max_tokens": 8, "messages": [
        {"role": "user", "content": [{"type": "text", "text": '"model": "haiku"'}]}]}
    post(proxy_url, json.dumps(body).encode())
    forwarded = fake.received[-1].json()
    assert forwarded["model"] == "claude-haiku-4-5"
    assert forwarded["messages"] == body["messages"]


def test_headers_forwarded_and_hop_by_hop_dropped(fake: FakeUpstream, proxy_url: str) -> None:
    sent = {
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
        "anthropic-workspace-id": "wrkspc_1",
        "x-app": "cli",
        "x-claude-code-session-id": "2b1e-session",
        "x-stainless-helper-method": "stream",
        "user-agent": "claude-cli/2.1.0 (external, cli)",
        "keep-alive": "timeout=5",
        "te": "trailers",
        "proxy-authorization": "Basic c2VjcmV0",
        "connection": "keep-alive, x-drop-me",
        "x-drop-me": "1",
    }
    status, _, _ = post(proxy_url, json.dumps(BODY).encode(), sent, path="/v1/messages?beta=true")
    assert status == 200
    got = fake.received[-1]
    assert got.query == "beta=true"
    for name in ("anthropic-beta", "anthropic-workspace-id", "x-app", "x-claude-code-session-id",
                 "x-stainless-helper-method", "user-agent", "x-api-key", "anthropic-version"):
        assert got.header(name) == sent.get(name, {"x-api-key": API_KEY,
                                                   "anthropic-version": "2023-06-01"}.get(name))
    for name in ("keep-alive", "te", "proxy-authorization", "x-drop-me"):
        assert got.header(name) is None, name


def test_a_cookie_the_upstream_sets_for_one_client_never_reaches_another(
        fake: FakeUpstream, start_proxy: Any) -> None:
    """The upstream's cookies (a load balancer's affinity, a bot-management token) are the
    client's business: the proxy relays them and keeps none for the next caller."""
    # By a host name, as api.anthropic.com is: an HTTP client keeps no cookies for an address.
    proxy_url = start_proxy(policy=make_policy(fake.url.replace("127.0.0.1", "localhost")))
    fake.script(Reply(headers={"set-cookie": "__cf_bm=tenant-a; Path=/; HttpOnly"}))
    status, headers, _ = post(proxy_url, json.dumps(BODY).encode())
    assert status == 200 and headers["set-cookie"].startswith("__cf_bm=tenant-a")
    status, _, _ = post(proxy_url, json.dumps(BODY).encode(), {"x-api-key": "sk-ant-other"})
    assert status == 200
    assert fake.received[-1].header("cookie") is None


def test_response_headers_clients_read_come_back(fake: FakeUpstream, proxy_url: str) -> None:
    fake.script(Fail(429, "rate_limit_error", headers={"retry-after": "3",
                                                       "x-should-retry": "true"}))
    status, headers, data = post(proxy_url, json.dumps(BODY).encode())
    assert status == 429
    assert headers["retry-after"] == "3"
    assert headers["x-should-retry"] == "true"
    assert headers["request-id"] == as_json(data)["request_id"]
    status, headers, _ = post(proxy_url, json.dumps(BODY).encode())
    assert status == 200
    assert any(h.startswith("anthropic-ratelimit-requests-") for h in headers)


def test_stream_cut_by_upstream_ends_with_an_error_event(fake: FakeUpstream, proxy_url: str
                                                         ) -> None:
    fake.script(Drop(after_events=3))
    status, _, data = post(proxy_url, json.dumps({**BODY, "stream": True}).encode())
    assert status == 200
    events = [e for e in data.split(b"\n\n") if e.strip()]
    assert events[0].startswith(b"event: message_start")
    assert events[-1].startswith(b"event: error\ndata: ")
    error = as_json(events[-1].split(b"data: ", 1)[1])
    assert error["type"] == "error"
    assert error["error"]["type"] == "api_error"


def test_upstream_timeout_is_a_retryable_504(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy(policy=without_retries(make_policy(fake.url), first_event=0.3,
                                              per_1k_output=0))
    fake.script(Stall(2.0))
    status, headers, data = post(url, json.dumps(BODY).encode())
    assert status == 504
    assert as_json(data)["error"]["type"] == "timeout_error"
    assert headers["x-should-retry"] == "true"


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
def test_count_tokens_routes_like_messages(fake: FakeUpstream, proxy_url: str, path: str) -> None:
    body = {"model": "opus", "messages": [{"role": "user", "content": "count me"}]}
    if path == "/v1/messages":
        body["max_tokens"] = 8
    status, headers, _ = post(proxy_url, json.dumps(body).encode(), path=path)
    assert status == 200
    assert headers["x-router-model"] == "claude-opus-4-7"
    assert fake.received[-1].json()["model"] == "claude-opus-4-7"
