"""Bad input gets an Anthropic-shaped error from the proxy itself, and nothing goes upstream."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import anthropic
import pytest

from router.fake import FakeUpstream
from tests.conftest import API_KEY, make_policy, post, with_section

GOOD: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 16,
                        "messages": [{"role": "user", "content": "hi"}]}


def without(field: str) -> bytes:
    return json.dumps({k: v for k, v in GOOD.items() if k != field}).encode()


def assert_anthropic_error(status: int, headers: dict[str, str], data: bytes,
                           expected_status: int, error_type: str) -> dict[str, Any]:
    assert status == expected_status
    assert headers["content-type"] == "application/json"
    body: dict[str, Any] = json.loads(data)
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert body["request_id"].startswith("req_")
    assert headers["request-id"] == body["request_id"]
    assert API_KEY not in data.decode()
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model": "claude-sonnet-4-6", "max_tokens": 16, "messages": [', "not valid JSON"),
        (b"", "empty"),
        (b"[1, 2]", "must be a JSON object"),
        (without("model"), "model: Field required"),
        (without("max_tokens"), "max_tokens: Field required"),
        (without("messages"), "messages: Field required"),
        (json.dumps({**GOOD, "max_tokens": "16"}).encode(), "max_tokens: expected int"),
        (json.dumps({**GOOD, "model": 4}).encode(), "model: expected str"),
        (json.dumps({**GOOD, "messages": {"role": "user"}}).encode(), "messages: expected array"),
        (json.dumps({**GOOD, "messages": [{"role": "user"}]}).encode(),
         "messages.0.content: Field required"),
        (json.dumps({**GOOD, "stream": "yes"}).encode(), "stream: expected bool"),
    ],
)
def test_invalid_body_is_a_400_naming_the_field(fake: FakeUpstream, proxy_url: str, body: bytes,
                                                message: str) -> None:
    status, headers, data = post(proxy_url, body)
    error = assert_anthropic_error(status, headers, data, 400, "invalid_request_error")
    assert message in error["error"]["message"]
    assert fake.received == []


def test_count_tokens_validates_too(fake: FakeUpstream, proxy_url: str) -> None:
    status, headers, data = post(proxy_url, b'{"messages": []}', path="/v1/messages/count_tokens")
    error = assert_anthropic_error(status, headers, data, 400, "invalid_request_error")
    assert error["error"]["message"] == "model: Field required"
    assert fake.received == []


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer "}, {"x-api-key": ""},
                                     {"authorization": "Basic abc"}])
def test_no_key_is_a_401_before_upstream(fake: FakeUpstream, proxy_url: str,
                                         headers: dict[str, str]) -> None:
    parts = urlsplit(proxy_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("POST", "/v1/messages", body=json.dumps(GOOD).encode(),
                 headers={"anthropic-version": "2023-06-01", **headers})
    response = conn.getresponse()
    data = response.read()
    assert_anthropic_error(response.status, {k.lower(): v for k, v in response.getheaders()},
                           data, 401, "authentication_error")
    assert fake.received == []


def test_sdk_without_key_gets_authentication_error(fake: FakeUpstream, proxy_url: str) -> None:
    client = anthropic.Anthropic(base_url=proxy_url, api_key=None, max_retries=0,
                                 default_headers={"Authorization": anthropic.Omit()})
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(**GOOD)
    assert info.value.request_id
    assert fake.received == []


def test_oversize_declared_body_is_a_413(fake: FakeUpstream, proxy_url: str) -> None:
    parts = urlsplit(proxy_url)
    size = 32 * 1024 * 1024 + 1
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"x-api-key: {API_KEY}\r\nContent-Length: {size}\r\n\r\n".encode()
            + b'{"model": "claude-sonnet-4-6", "messages": ['
        )
        response = http.client.HTTPResponse(sock)
        response.begin()
        data = response.read()
    error = assert_anthropic_error(response.status, {k.lower(): v for k, v in
                                                     response.getheaders()},
                                   data, 413, "request_too_large")
    assert str(size) in error["error"]["message"]
    assert fake.received == []


def test_oversize_chunked_body_is_a_413(fake: FakeUpstream, start_proxy: Any) -> None:
    url = start_proxy(policy=with_section(make_policy(fake.url), "server", max_body_bytes=1000))
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    chunks = (b"x" * 400 for _ in range(5))
    conn.request("POST", "/v1/messages", body=chunks, encode_chunked=True,
                 headers={"x-api-key": API_KEY, "Transfer-Encoding": "chunked"})
    response = conn.getresponse()
    data = response.read()
    assert_anthropic_error(response.status, {k.lower(): v for k, v in response.getheaders()},
                           data, 413, "request_too_large")
    assert fake.received == []


def test_unknown_path_and_wrong_method(fake: FakeUpstream, proxy_url: str) -> None:
    parts = urlsplit(proxy_url)
    for method, path, status, kind in [("GET", "/v1/nothing", 404, "not_found_error"),
                                       ("GET", "/v1/messages", 405, "invalid_request_error"),
                                       ("GET", "/v1/modelsX", 404, "not_found_error"),
                                       ("POST", "/v1//messages", 404, "not_found_error"),
                                       ("POST", "//v1/messages", 404, "not_found_error"),
                                       ("POST", "/v1/messages//count_tokens", 404,
                                        "not_found_error")]:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request(method, path, headers={"x-api-key": API_KEY})
        response = conn.getresponse()
        assert_anthropic_error(response.status, {k.lower(): v for k, v in response.getheaders()},
                               response.read(), status, kind)
    assert fake.received == []


def router_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("router")]


def test_keys_never_reach_the_logs(fake: FakeUpstream, proxy_url: str,
                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        post(proxy_url, json.dumps(GOOD).encode())
        post(proxy_url, json.dumps(GOOD).encode(), {"authorization": f"Bearer {API_KEY}"})
        post(proxy_url, b"{broken", {"x-api-key": API_KEY})
        # The log line is written just after the answer goes out.
        deadline = time.monotonic() + 5
        while len(router_lines(caplog)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    lines = router_lines(caplog)
    assert len(lines) >= 3
    assert all(API_KEY not in line for line in lines)
    assert all("hi" not in str(r.msg.get("messages", "")) for r in caplog.records
               if isinstance(r.msg, dict))
