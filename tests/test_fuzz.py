"""Bad input at scale: Hypothesis-made bodies, headers, paths and methods against a live proxy.

Every answer, whatever was sent, must be one a client can handle:

* never a 500 from the proxy itself; a 5xx only as the pass-through of an upstream answer (the
  fake received the request, the body and ``request-id`` are the upstream's own);
* an Anthropic-shaped JSON error (``{"type":"error","error":{"type","message"},"request_id"}``,
  with a matching ``request-id`` header) for every status >= 400;
* no traceback, source location or Python repr in any body;
* the client's API key in no response body or header;
* a connection answered, never dropped without a response, and the proxy still serving after.

The bugs this fuzzing found in ``router/`` (deep nesting, invalid UTF-8, non-string block types,
model ids that are no header value, an escaped top-level ``model`` key, decoded and normalised
paths) are fixed; the ``test_regression_*`` tests below pin each one.
"""

from __future__ import annotations

import asyncio
import copy
import http.client
import itertools
import json
import random
import re
import socket
import string
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import msgspec
import pytest
import uvicorn
from aiohttp import web
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from router.app import create_app
from router.fake import Drop, Fail, FakeUpstream, Malformed, Reply, Stall, StreamError
from router.routing.rules import Policy
from router.upstream.relay import reported_as
from tests.conftest import (
    RUNNING,
    make_policy,
    proxy_settings,
    running_proxy,
    with_section,
    without_retries,
)
from tests.procs import wait_for

API_KEY = "sk-ant-fuzz-7f3a9c1e5b2d4068aa"
"""Distinctive, so any echo of it in an answer is unmistakable."""
KEY_TAIL = API_KEY[-16:]
GOOD: dict[str, Any] = {"model": "claude-sonnet-4-6", "max_tokens": 16,
                        "messages": [{"role": "user", "content": "hi"}]}
LEAKS = re.compile(
    r"Traceback \(most recent|File \"|line \d+, in |object at 0x[0-9a-f]+|<class '|<function |"
    r"<bound method|\b(?:[A-Z][A-Za-z]*Error|Exception)\(|msgspec\.|litestar\.|uvicorn\.|aiohttp\."
)
PROXY_INTERNAL = "internal error in the routing proxy"


def fuzz(examples: int) -> settings:
    """Settings for one fuzz test: ``examples`` runs, no deadline, no example database."""
    return settings(max_examples=examples, deadline=None, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])


# --------------------------------------------------------------------------- a pooled client


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass
class Sent:
    """One request as sent, for the checks and the known-bug predicates."""

    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


class Pool:
    """One keep-alive connection reused across examples; reconnects when it goes stale."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.conn: http.client.HTTPConnection | None = None
        self.used = False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.conn, self.used = None, False

    def send(self, sent: Sent, *, chunked: bool = False) -> Answer | None:
        """Send one request; None when the server closed the connection without an answer."""
        for _ in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            reused = self.used
            try:
                body: Any = sent.body
                if chunked and sent.body is not None:
                    data = sent.body
                    body = iter([data[: len(data) // 2], data[len(data) // 2:]])
                self.conn.request(sent.method, sent.path, body=body, headers=sent.headers,
                                  encode_chunked=chunked and sent.body is not None)
                response = self.conn.getresponse()
                data = response.read()
            except (http.client.HTTPException, OSError):
                self.close()
                if reused:
                    continue  # a stale keep-alive connection: once more on a fresh one
                return None
            self.used = True
            if response.will_close:
                self.close()
            return Answer(response.status, response.getheaders(), data)
        return None


@pytest.fixture(scope="module")
def pool(fake_server: FakeUpstream) -> Iterator[Pool]:
    """A client of this module's own passthrough proxy: like ``proxy_url`` (no retries, so the
    client sees what the upstream said). Inputs the fake answers with a 5xx may open circuits;
    with no fallback, an open circuit still sends each request upstream once, so what the
    client sees stays what the upstream said."""
    policy = without_retries(make_policy(fake_server.url))
    with serving(policy) as url:
        p = Pool(url)
        yield p
        p.close()


@contextmanager
def serving(policy: Policy) -> Iterator[str]:
    """Run the app under uvicorn in a thread, as ``tests.conftest.running_proxy`` does, but on a
    listening socket made with ``IPPROTO_TCP``: asyncio sets TCP_NODELAY on accepted sockets
    only when their ``proto`` says TCP, and without it every keep-alive answer after the first
    waits ~40 ms for a delayed ACK between its headers and its body."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(
        create_app(proxy_settings(), policy), log_config=None, access_log=False,
        server_header=False, date_header=False, lifespan="on", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])),
                              daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("proxy failed to start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def headers_for(extra: dict[str, str] | None = None, *, bearer: bool = False) -> dict[str, str]:
    auth = {"authorization": f"Bearer {API_KEY}"} if bearer else {"x-api-key": API_KEY}
    return {**auth, "anthropic-version": "2023-06-01", "content-type": "application/json",
            **(extra or {})}


# --------------------------------------------------------------------------- known bugs


def nesting_depth(body: bytes) -> int:
    """The deepest bracket nesting of a JSON text, ignoring brackets inside strings."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def top_level(body: bytes | None) -> dict[str, Any] | None:
    """The body as a JSON object (last duplicate key wins, as in msgspec), or None."""
    try:
        value = json.loads(body or b"")
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def not_a_header_value(text: str) -> bool:
    """Whether ``text`` cannot be sent as an HTTP header value by the server (uvicorn)."""
    return any(ord(c) > 0xFF or ord(c) == 0x7F or (ord(c) < 0x20 and c != "\t") for c in text)


# --------------------------------------------------------------------------- the checks


def check(sent: Sent, answer: Answer | None, fake: FakeUpstream, upstream_before: int,
          *, proxy_errors: frozenset[int] = frozenset(), raw_body: bytes | None = None) -> None:
    """Assert what must hold for every answer (see the module docstring).

    ``proxy_errors``: 5xx statuses the proxy may make itself here (502/504 when the upstream was
    scripted to break). ``raw_body``: an upstream body passed through as is (not Anthropic's).
    """
    went_upstream = len(fake.received) > upstream_before
    if answer is None:
        raise AssertionError(f"connection closed without an answer to {sent.method} "
                             f"{sent.path!r}")
    note(f"{answer.status} {answer.headers} {answer.body[:500]!r}")
    text = answer.body.decode("utf-8", "replace")
    assert API_KEY not in text and KEY_TAIL not in text, "API key echoed in the body"
    for name, value in answer.headers:
        assert KEY_TAIL not in value and KEY_TAIL not in name, f"API key in header {name}"
    assert not LEAKS.search(text), f"internals leak in the body: {text[:500]}"
    if answer.status >= 500 and answer.status not in proxy_errors:
        assert went_upstream, f"{answer.status} made by the proxy itself: {text[:300]}"
        assert PROXY_INTERNAL not in text
    if answer.status < 400 or sent.method == "HEAD":
        return
    if raw_body is not None:
        assert answer.body == raw_body
        return
    assert (answer.header("content-type") or "").startswith("application/json"), answer.headers
    error = json.loads(answer.body)
    assert isinstance(error, dict), error
    assert error.get("type") == "error", error
    assert isinstance(error.get("error"), dict), error
    assert isinstance(error["error"].get("type"), str) and error["error"]["type"], error
    assert isinstance(error["error"].get("message"), str), error
    assert isinstance(error.get("request_id"), str), error
    assert error["request_id"].startswith("req_"), error
    assert answer.header("request-id") == error["request_id"], answer.headers


def still_serving(pool: Pool, fake: FakeUpstream) -> None:
    """After a burst of bad input, a good request still gets its 200."""
    answer = pool.send(Sent("POST", "/v1/messages", json.dumps(GOOD).encode(), headers_for()))
    assert answer is not None and answer.status == 200, answer


def exchange(pool: Pool, fake: FakeUpstream, sent: Sent, **kw: Any) -> Answer | None:
    before = len(fake.received)
    answer = pool.send(sent, chunked=kw.pop("chunked", False))
    check(sent, answer, fake, before, **kw)
    return answer


# --------------------------------------------------------------------------- strategies

scalars = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=25,
)
MODELS = ["claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-7", "haiku", "sonnet", "opus",
          "claude-3-5-haiku-latest", "claude-sonnet-4-5-20250929", "claude-fable-5", "gpt-4o"]
models = st.sampled_from(MODELS) | st.text(
    st.characters(codec="latin-1", exclude_categories=("Cc",)), max_size=24)
short_text = st.text(max_size=30)
b64 = st.text(string.ascii_letters + string.digits + "+/=", max_size=24)


def block_strategy() -> st.SearchStrategy[dict[str, Any]]:
    text = st.fixed_dictionaries({"type": st.just("text"), "text": short_text},
                                 optional={"cache_control": st.just({"type": "ephemeral"}),
                                           "citations": json_values})
    image = st.fixed_dictionaries({"type": st.just("image"), "source": st.fixed_dictionaries(
        {"type": st.sampled_from(["base64", "url", "file"]),
         "media_type": st.sampled_from(["image/png", "image/jpeg", "text/plain"]),
         "data": b64})})
    document = st.fixed_dictionaries({"type": st.just("document"), "source": json_values},
                                     optional={"title": short_text})
    tool_use = st.fixed_dictionaries({"type": st.just("tool_use"), "id": short_text,
                                      "name": short_text, "input": json_values})
    tool_result = st.fixed_dictionaries(
        {"type": st.just("tool_result"), "tool_use_id": short_text},
        optional={"content": short_text | st.lists(text, max_size=2), "is_error": st.booleans()})
    thinking = st.fixed_dictionaries({"type": st.just("thinking"), "thinking": short_text,
                                      "signature": b64})
    redacted = st.fixed_dictionaries({"type": st.just("redacted_thinking"), "data": b64})
    other = st.dictionaries(st.sampled_from(["type", "text", "id", "content", "source", "x"]),
                            json_values, max_size=3)
    return text | image | document | tool_use | tool_result | thinking | redacted | other


blocks = block_strategy()
messages = st.lists(
    st.fixed_dictionaries({
        "role": st.sampled_from(["user", "assistant"]) | st.text(max_size=10),
        "content": short_text | st.lists(blocks, max_size=3),
    }),
    min_size=1, max_size=4,
)
tools = st.lists(st.fixed_dictionaries(
    {"name": short_text, "input_schema": json_values},
    optional={"description": short_text, "type": st.sampled_from(["custom", "web_search_20250305",
                                                                   "bash_20250124"])}),
    max_size=3)
thinking_configs = (
    st.fixed_dictionaries({"type": st.just("enabled"),
                           "budget_tokens": st.integers(-5, 2**40)})
    | st.fixed_dictionaries({"type": st.sampled_from(["disabled", "adaptive", "x"])})
    | json_values
)
OPTIONAL_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "stream": st.booleans(),
    "system": short_text | st.lists(blocks, max_size=2),
    "tools": tools,
    "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "none"}]),
    "thinking": thinking_configs,
    "metadata": st.fixed_dictionaries({}, optional={"user_id": short_text}),
    "temperature": st.floats(-1, 3),
    "top_k": st.integers(-1, 500),
    "stop_sequences": st.lists(short_text, max_size=2),
    "output_config": json_values,
}
valid_requests = st.fixed_dictionaries(
    {"model": models, "max_tokens": st.integers(1, 64), "messages": messages},
    optional=OPTIONAL_FIELDS,
)


@st.composite
def mutated_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A Messages request with fields removed, mistyped or replaced, at the top or deep inside."""
    # A copy: st.just() and sampled_from() hand out shared objects that must stay unchanged.
    request: dict[str, Any] = copy.deepcopy(draw(valid_requests))
    for _ in range(draw(st.integers(0, 3))):
        how = draw(st.sampled_from(["remove", "replace", "deep", "add", "huge"]))
        keys = sorted(request)
        if how == "remove" and keys:
            request.pop(draw(st.sampled_from(keys)))
        elif how == "replace" and keys:
            request[draw(st.sampled_from(keys))] = draw(json_values)
        elif how == "add":
            request[draw(st.text(max_size=12))] = draw(json_values)
        elif how == "huge":
            key = draw(st.sampled_from(["max_tokens", "temperature", "top_k", "model"]))
            request[key] = draw(st.sampled_from([2**63, -(2**63) - 1, 10**30, 1e308, -1e308,
                                                 2**64, 0, -1, 5e-324]))
        elif how == "deep":
            replace_somewhere(request, draw(json_values), draw(st.randoms()))
    return request


def replace_somewhere(value: Any, new: Any, rng: Any) -> None:
    """Replace one randomly chosen nested value of ``value`` (a dict or list) with ``new``."""
    node = value
    while True:
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return
        key = rng.choice(keys)
        child = node[key]
        if isinstance(child, dict | list) and child and rng.random() < 0.6:
            node = child
            continue
        node[key] = new
        return


# RFC 9110 field-value: visible ASCII, space, tab, obs-text (what a server must accept).
field_chars = st.characters(codec="latin-1", exclude_categories=("Cc",)) | st.sampled_from(
    ["\t", " "])
header_values = st.text(field_chars, max_size=40).map(str.strip) | st.sampled_from(
    ["2023-06-01", "2026-10-21", "2023-06-01, 2026-10-21", "", "application/json",
     "application/json; charset=latin-1", "text/plain", "multipart/form-data; boundary=x",
     "interleaved-thinking-2025-05-14,files-api-2025-04-14", "claude-code-20250219"])


# --------------------------------------------------------------------------- the tests

ENDPOINTS = st.sampled_from(["/v1/messages", "/v1/messages/count_tokens"])


@pytest.fixture(autouse=True)
def _still_serving_after(fake: FakeUpstream, pool: Pool) -> Iterator[None]:
    yield
    fake.clear()
    still_serving(pool, fake)


@fuzz(600)
@given(value=json_values | st.floats() | st.lists(st.floats()), path=ENDPOINTS,
       ascii_only=st.booleans())
def test_arbitrary_json_values(fake: FakeUpstream, pool: Pool, value: Any, path: str,
                               ascii_only: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()  # NaN/Infinity: invalid JSON
    sent = Sent("POST", path, body, headers_for())
    answer = exchange(pool, fake, sent)
    assert answer is None or answer.status in (200, 400, 404), answer.status


@fuzz(1000)
@given(request=mutated_requests(), path=ENDPOINTS, bearer=st.booleans(), chunked=st.booleans())
def test_almost_valid_requests(fake: FakeUpstream, pool: Pool, request: dict[str, Any], path: str,
                               bearer: bool, chunked: bool) -> None:
    body = json.dumps(request).encode()
    sent = Sent("POST", path, body, headers_for(bearer=bearer))
    before = len(fake.received)
    answer = exchange(pool, fake, sent, chunked=chunked)
    if answer is None or answer.status != 200:
        return
    assert len(fake.received) == before + 1
    routed = answer.header("x-router-model")
    assert routed is not None, answer.headers
    forwarded = fake.received[-1]
    assert forwarded.json()["model"].strip() == routed.strip()  # HTTP trims header values
    assert forwarded.header("x-api-key" if not bearer else "authorization") == (
        API_KEY if not bearer else f"Bearer {API_KEY}")
    if path != "/v1/messages":
        return
    if (answer.header("content-type") or "").startswith("text/event-stream"):
        assert request.get("stream") is True
        assert answer.body.rstrip().endswith(b'data: {"type":"message_stop"}'), answer.body[-200:]
        assert b"event: error" not in answer.body
    else:
        # Byte for byte, but for the model the answer reports: the one the client asked for.
        expected = fake.sent[-1] if routed == request["model"] else reported_as(
            fake.sent[-1], request["model"])
        assert answer.body == expected


@fuzz(600)
@given(data=st.binary(max_size=300) | st.builds(
    lambda prefix, tail: prefix + tail,
    st.sampled_from([b"", b"{", b'{"model": "', b'{"model": "claude-sonnet-4-6", "max_tokens": ',
                     b'{"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [{"role": "',
                     b'{"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": [], "x": "']),
    st.binary(max_size=80)), path=ENDPOINTS)
def test_random_bytes(fake: FakeUpstream, pool: Pool, data: bytes, path: str) -> None:
    sent = Sent("POST", path, data, headers_for())
    answer = exchange(pool, fake, sent)
    assert answer is None or answer.status in (200, 400, 404), answer.status


@fuzz(600)
@given(text=st.text(max_size=200), where=st.sampled_from(["body", "content", "model", "system",
                                                         "key"]),
       surrogates=st.booleans())
def test_random_unicode(fake: FakeUpstream, pool: Pool, text: str, where: str,
                        surrogates: bool) -> None:
    if surrogates:
        text += "\ud800"  # a lone surrogate: invalid UTF-8 once encoded with surrogatepass
    if where == "body":
        body = text.encode("utf-8", "surrogatepass")
    else:
        request = dict(GOOD)
        if where == "content":
            request["messages"] = [{"role": "user", "content": text}]
        elif where == "key":
            request[text] = text
        else:
            request[where] = text
        body = json.dumps(request, ensure_ascii=False).encode("utf-8", "surrogatepass")
    exchange(pool, fake, Sent("POST", "/v1/messages", body, headers_for()))


NUMBERS = ["1e400", "-1e400", "1" + "0" * 5000, "-" + "9" * 400, "0." + "0" * 400 + "1",
           "1E-400", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
           "18446744073709551616", "-0", "0.0", "1.5", "1e2", "00", "01", "+1", ".5", "1.",
           "0x10", "Infinity", "-Infinity", "NaN", "1e", "--1", "4294967296"]


@fuzz(400)
@given(number=st.sampled_from(NUMBERS) | st.integers().map(str)
       | st.integers(-(2**300), 2**300).map(str) | st.floats().map(repr),
       field_name=st.sampled_from(["max_tokens", "temperature", "top_k", "x", "budget",
                                   "stream", "model", "content"]))
def test_huge_and_odd_numbers(fake: FakeUpstream, pool: Pool, number: str, field_name: str
                              ) -> None:
    base = ('{"model": "claude-sonnet-4-6", "max_tokens": 16, '
            '"messages": [{"role": "user", "content": "hi"}]')
    if field_name == "budget":
        text = base + ', "thinking": {"type": "enabled", "budget_tokens": ' + number + "}}"
    elif field_name == "content":
        text = base.replace('"content": "hi"', '"content": ' + number) + "}"
    elif field_name in ("max_tokens", "model"):
        text = base.replace(f'"{field_name}": ' + ("16" if field_name == "max_tokens"
                                                   else '"claude-sonnet-4-6"'),
                            f'"{field_name}": {number}') + "}"
    else:
        text = base + f', "{field_name}": {number}' + "}"
    answer = exchange(pool, fake, Sent("POST", "/v1/messages", text.encode(), headers_for()))
    if answer is not None and answer.status == 400 and field_name == "max_tokens" and (
            re.fullmatch(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?", number)):
        # Valid JSON, wrong value: the message names the field.
        assert "max_tokens" in json.loads(answer.body)["error"]["message"]


def nest(depth: int, kind: str) -> str:
    if kind == "array":
        return "[" * depth + "1" + "]" * depth
    if kind == "object":
        return '{"a":' * depth + "1" + "}" * depth
    return '[{"a":' * (depth // 2) + "1" + "}]" * (depth // 2)


NEST_PLACES = {
    "top": "{Q}",
    "unknown_field": '{"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": '
                     '[{"role": "user", "content": "hi"}], "extra": {Q}}',
    "block": '{"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", '
             '"content": [{"type": "text", "text": "x", "extra": {Q}}]}]}',
    "tool_input": '{"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user",'
                  ' "content": "a"}, {"role": "assistant", "content": [{"type": "tool_use", '
                  '"id": "t", "name": "n", "input": {Q}}]}]}',
    "tools": '{"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": [{"role": "user", '
             '"content": "hi"}], "tools": [{"name": "t", "input_schema": {Q}}]}',
    "system": '{"model": "claude-sonnet-4-6", "max_tokens": 8, "system": [{"type": "text", '
              '"text": "s", "x": {Q}}], "messages": [{"role": "user", "content": "hi"}]}',
    "messages": '{"model": "claude-sonnet-4-6", "max_tokens": 8, "messages": {Q}}',
    "model": '{"model": {Q}, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}',
}


def nested_body(place: str, depth: int, kind: str) -> bytes:
    return NEST_PLACES[place].replace("{Q}", nest(depth, kind)).encode()


@fuzz(300)
@given(depth=st.integers(1, 60) | st.integers(900, 1100) | st.sampled_from([1000, 5000, 100_000]),
       kind=st.sampled_from(["array", "object", "mixed"]),
       place=st.sampled_from(sorted(NEST_PLACES)), path=ENDPOINTS)
def test_deeply_nested(fake: FakeUpstream, pool: Pool, depth: int, kind: str, place: str,
                       path: str) -> None:
    answer = exchange(pool, fake, Sent("POST", path, nested_body(place, depth, kind),
                                       headers_for()))
    assert answer is None or answer.status < 500, answer.status


def encode_json(value: Any, rng: Any, decoys: list[Any], escape: float) -> str:
    """JSON text for ``value`` with random whitespace, ``\\uXXXX`` escapes and, before some keys,
    a duplicate of the key with a decoy value (the later, real one wins)."""

    def ws() -> str:
        return rng.choice(["", "", "", " ", "\n", "\t", "\r\n  "])

    def text(s: str) -> str:
        out = []
        for c in s:
            if c in '"\\' or ord(c) < 0x20:
                out.append(json.dumps(c)[1:-1])
            elif rng.random() < escape:
                data = c.encode("utf-16-be", "surrogatepass")
                out.extend(f"\\u{int.from_bytes(data[i:i + 2], 'big'):04x}"
                           for i in range(0, len(data), 2))
            else:
                out.append(c)
        return '"' + "".join(out) + '"'

    def enc(v: Any, decoy: bool = False) -> str:
        if isinstance(v, dict):
            items = []
            for k, item in v.items():
                if decoys and not decoy and rng.random() < 0.15:
                    items.append(text(k) + ws() + ":" + ws() + enc(rng.choice(decoys), True))
                items.append(text(k) + ws() + ":" + ws() + enc(item, decoy))
            return "{" + ws() + ("," + ws()).join(items) + ws() + "}"
        if isinstance(v, list):
            return "[" + ws() + ("," + ws()).join(enc(x, decoy) for x in v) + ws() + "]"
        if isinstance(v, str):
            return text(v)
        return json.dumps(v)

    return ws() + enc(value) + ws()


@fuzz(1000)
@given(request=valid_requests, seed=st.integers(0, 2**32),
       decoys=st.lists(json_values | st.sampled_from(MODELS), max_size=3),
       escape=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
       nested_model=st.sampled_from(["none", "metadata", "tool_input", "text"]))
def test_duplicate_keys_and_odd_encodings(fake: FakeUpstream, pool: Pool, request: dict[str, Any],
                                          seed: int, decoys: list[Any], escape: float,
                                          nested_model: str) -> None:
    """The same request spelled many ways: the proxy and the upstream must agree on the model,
    and everything but the top-level model must reach the upstream unchanged."""
    request = copy.deepcopy(request)
    request.pop("stream", None)
    if nested_model == "metadata":
        request["metadata"] = {"model": request["model"]}
    elif nested_model == "tool_input":
        use = {"type": "tool_use", "id": "t1", "name": "pick", "input": {"model": request["model"]}}
        request["messages"].append({"role": "assistant", "content": [use]})
    elif nested_model == "text":
        request["messages"].append({"role": "user", "content": f'"model": "{request["model"]}"'})
    text = encode_json(request, random.Random(seed), decoys, escape)
    body = text.encode("utf-8", "surrogatepass")
    # Each example is a conversation of its own: two examples with the same opening would
    # otherwise be one conversation, and the second routed by what the first left behind.
    session = {"x-claude-code-session-id": f"fuzz-{seed}-{escape}-{nested_model}"}
    sent = Sent("POST", "/v1/messages", body, headers_for(session))
    before = len(fake.received)
    answer = exchange(pool, fake, sent)
    if answer is None or answer.status >= 500 or len(fake.received) == before:
        return
    routed = answer.header("x-router-model")
    assert routed is not None
    forwarded = fake.received[-1].json()
    expected = json.loads(body)
    # HTTP trims the x-router-model value (leading whitespace at least): compare trimmed.
    same = forwarded.pop("model").strip() == routed.strip()
    expected.pop("model")
    # ...but for what the routed model cannot take, which the reason says was dropped.
    reason = answer.header("x-router-reason") or ""
    if "adaptive thinking" in reason and "dropped" in reason:
        expected.pop("thinking", None)
    if "effort" in reason and "dropped" in reason and isinstance(expected.get("output_config"),
                                                                dict):
        expected["output_config"].pop("effort", None)
        if not expected["output_config"]:
            expected.pop("output_config")
    same = same and forwarded == expected
    assert same, (routed, forwarded, expected)


@fuzz(800)
@given(values=st.fixed_dictionaries({}, optional={
    "anthropic-version": header_values, "anthropic-beta": header_values,
    "content-type": header_values, "accept": header_values, "x-app": header_values,
    "anthropic-workspace-id": header_values, "user-agent": header_values}),
       drop=st.sets(st.sampled_from(["anthropic-version", "content-type", "x-api-key"])),
       stream=st.booleans(), path=ENDPOINTS)
def test_random_header_values(fake: FakeUpstream, pool: Pool, values: dict[str, str],
                              drop: set[str], stream: bool, path: str) -> None:
    headers = headers_for(values)
    for name in drop:
        headers.pop(name, None)
    body = json.dumps({**GOOD, "stream": stream} if path == "/v1/messages" else
                      {"model": GOOD["model"], "messages": GOOD["messages"]}).encode()
    before = len(fake.received)
    answer = exchange(pool, fake, Sent("POST", path, body, headers))
    assert answer is not None
    if "x-api-key" in drop:
        assert answer.status == 401
        assert len(fake.received) == before
        return
    # Headers other than the key are the upstream's business: they go through as sent, byte
    # for byte (the client sent latin-1; the fake keeps the bytes it got, surrogate-escaped).
    assert len(fake.received) == before + 1
    got = fake.received[-1]
    for name, value in values.items():
        if name in drop or name == "content-type":
            continue
        arrived = (got.header(name) or "").encode("utf-8", "surrogateescape")
        assert arrived == value.encode("latin-1"), (name, arrived, value)


METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "TRACE"]
SEGMENTS = ["messages", "models", "count_tokens", "router", "explain", "..", ".", "", "v1",
            "claude-sonnet-4-6", "%2F", "%2E%2E", "%3F", "%23", "%00", "%20", "%ff", "%zz"]
segments = st.sampled_from(SEGMENTS) | st.text(max_size=8).map(lambda s: quote(s, safe=""))
paths = st.builds(
    lambda prefix, segs, query: prefix + "/".join(segs) + query,
    st.sampled_from(["/v1/", "/v1/messages/", "/v1/models/", "/v1/messages/count_tokens/"]),
    st.lists(segments, max_size=4),
    st.sampled_from(["", "?beta=true", "?x=%zz", "?a=1&a=2", "?"]) | st.text(
        max_size=8).map(lambda s: "?" + quote(s, safe="=&")),
)
UPSTREAM_PATHS = ("/v1/messages", "/v1/messages/count_tokens", "/v1/models")


def _normal(path: str) -> str:
    return re.sub("/+", "/", path).rstrip("/")


@fuzz(800)
@given(method=st.sampled_from(METHODS), path=paths, body=st.sampled_from(
    [None, json.dumps(GOOD).encode(), b"{}", b"\x00\xff"]))
def test_random_paths_and_methods(fake: FakeUpstream, pool: Pool, method: str, path: str,
                                  body: bytes | None) -> None:
    sent = Sent(method, path, body, headers_for())
    before = len(fake.received)
    answer = exchange(pool, fake, sent)
    assert answer is not None
    assert answer.status in (200, 204, 400, 401, 404, 405, 413), answer.status
    # Only the proxied endpoints reach the upstream, with the path and query the client sent.
    raw_path, _, query = path.partition("?")
    for got in fake.received[before:]:
        expected = _normal(unquote(raw_path))
        same = (_normal(got.path) == expected and got.query == query
                and got.path.startswith(UPSTREAM_PATHS))
        assert same, (path, got.path, got.query)


@dataclass(frozen=True)
class Fault:
    behaviour: Any
    proxy_errors: frozenset[int] = field(default_factory=frozenset)
    raw: bytes | None = None


def _faults() -> st.SearchStrategy[Fault]:
    statuses = st.sampled_from([(400, "invalid_request_error"), (401, "authentication_error"),
                                (403, "permission_error"), (404, "not_found_error"),
                                (413, "request_too_large"), (429, "rate_limit_error"),
                                (500, "api_error"), (502, "api_error"), (503, "api_error"),
                                (504, "timeout_error"), (529, "overloaded_error")])
    garbage = st.sampled_from([b"", b"<html>502 Bad Gateway</html>", b"{", b"null",
                               b'{"type": "error"}', b"\xff\xfe"])
    return st.one_of(
        st.builds(lambda sm: Fault(Fail(sm[0], sm[1])), statuses),
        st.builds(lambda n: Fault(Drop(n), frozenset({502})), st.none() | st.integers(0, 6)),
        st.builds(lambda n, t: Fault(StreamError(n, t)), st.integers(0, 6),
                  st.sampled_from(["overloaded_error", "api_error", "rate_limit_error"])),
        st.builds(lambda s: Fault(Stall(s)), st.sampled_from([0.0, 0.05])),
        st.builds(lambda b, s: Fault(Malformed(b, s), raw=b), garbage,
                  st.sampled_from([200, 500, 502, 503, 529])),
        st.just(Fault(Reply(text="fine", event_delay=0.001))),
    )


@fuzz(500)
@given(fault=_faults(), stream=st.booleans(), model=st.sampled_from(MODELS[:6]))
def test_upstream_faults_reach_the_client_in_shape(fake: FakeUpstream, pool: Pool, fault: Fault,
                                                   stream: bool, model: str) -> None:
    """Upstream failures come back as the upstream's own answer or as the proxy's shaped
    502/504; a stream broken after its first byte ends with an ``error`` event."""
    fake.clear()
    fake.script(fault.behaviour)
    body = json.dumps({**GOOD, "model": model, "stream": stream}).encode()
    sent = Sent("POST", "/v1/messages", body, headers_for())
    answer = exchange(pool, fake, sent, proxy_errors=fault.proxy_errors,
                      raw_body=fault.raw if fault.raw is not None else None)
    assert answer is not None
    behaviour = fault.behaviour
    if isinstance(behaviour, Fail):
        assert answer.status == behaviour.status
        assert json.loads(answer.body)["error"]["type"] == behaviour.error_type
    elif isinstance(behaviour, Drop):
        if stream and behaviour.after_events:
            assert answer.status == 200
            assert answer.body.rstrip().split(b"\n\n")[-1].startswith(b"event: error")
        else:
            assert answer.status == 502
            assert json.loads(answer.body)["error"]["type"] == "api_error"
            assert answer.header("x-should-retry") == "true"
    elif isinstance(behaviour, StreamError) and stream:
        assert answer.status == 200
        last = answer.body.rstrip().split(b"\n\n")[-1]
        assert last.startswith(b"event: error\n")
        assert json.loads(last.split(b"data: ", 1)[1])["error"]["type"] == behaviour.error_type
    elif isinstance(behaviour, Malformed):
        assert answer.status == behaviour.status
        assert answer.body == behaviour.body
    elif isinstance(behaviour, Reply | Stall):
        assert answer.status == 200


# --------------------------------------------------------------------------- regressions

@pytest.mark.parametrize("place", ["unknown_field", "block", "tools"])
def test_regression_deep_nesting_is_a_400(fake: FakeUpstream, pool: Pool, place: str) -> None:
    answer = pool.send(Sent("POST", "/v1/messages", nested_body(place, 1000, "array"),
                            headers_for()))
    assert answer is not None and answer.status in (200, 400), answer


@pytest.mark.parametrize("kind", [[], {}, ["text"]])
def test_regression_block_type_not_a_string(fake: FakeUpstream, pool: Pool, kind: Any) -> None:
    body = json.dumps({**GOOD, "messages": [{"role": "user", "content": [{"type": kind}]}]})
    answer = pool.send(Sent("POST", "/v1/messages", body.encode(), headers_for()))
    assert answer is not None and answer.status in (200, 400), answer


def test_regression_invalid_utf8_is_a_400(fake: FakeUpstream, pool: Pool) -> None:
    body = b'{"model": "claude-sonnet-4-6\xff", "max_tokens": 8, "messages": []}'
    answer = pool.send(Sent("POST", "/v1/messages", body, headers_for()))
    assert answer is not None and answer.status == 400, answer


@pytest.mark.parametrize("model", ["claude-\u2603", "claude-x\r\nx-injected: 1", "\u0000"])
def test_regression_model_that_is_no_header_value(fake: FakeUpstream, pool: Pool, model: str
                                                 ) -> None:
    body = json.dumps({**GOOD, "model": model}).encode()
    before = len(fake.received)
    answer = pool.send(Sent("POST", "/v1/messages", body, headers_for()))
    assert answer is not None and answer.status == 400, answer
    assert json.loads(answer.body)["error"]["message"].startswith("model: not a valid model id")
    assert all(k.lower() != "x-injected" for k, _ in answer.headers)
    assert len(fake.received) == before


def test_regression_escaped_top_level_model_key(fake: FakeUpstream, pool: Pool) -> None:
    body = (b'{"mod\\u0065l": "haiku", "max_tokens": 8, "messages": [{"role": "user", '
            b'"content": "hi"}], "metadata": {"model": "haiku"}}')
    answer = pool.send(Sent("POST", "/v1/messages", body, headers_for()))
    assert answer is not None and answer.status == 200, answer
    assert fake.received[-1].json() == {**json.loads(body), "model": "claude-haiku-4-5"}


@pytest.mark.parametrize(("path", "upstream", "query"), [
    ("/v1/models/../../v1/organizations", "/v1/models/../../v1/organizations", ""),
    ("/v1/models/%2E%2E/%2E%2E/v1/organizations", "/v1/models/../../v1/organizations", ""),
    ("/v1/models/a%3Fb", "/v1/models/a?b", ""),
    ("/v1/models/a%23b", "/v1/models/a#b", ""),
    ("/v1/models?after_id=%3A", "/v1/models", "after_id=%3A"),
])
def test_regression_path_and_query_are_not_reinterpreted(fake: FakeUpstream, pool: Pool, path: str,
                                                        upstream: str, query: str) -> None:
    """Refused, or forwarded as the client sent them: never another upstream path or query."""
    before = len(fake.received)
    answer = pool.send(Sent("GET", path, None, headers_for()))
    assert answer is not None
    got = [(r.path, r.query) for r in fake.received[before:]]
    assert all(item == (upstream, query) for item in got), got


# ---------------------------------------------------------------------- what the upstream sends


class RawUpstream:
    """An upstream on loopback that answers every request with the bytes a test gives it: a 200
    ``text/event-stream`` sent as chunks in the pieces given, a little apart, then a clean end.
    What no faithful fake would send: truncated events, odd line endings split anywhere, huge
    events, bad JSON."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(status=200, headers={
            "content-type": "text/event-stream; charset=utf-8", "request-id": "req_raw"})
        await response.prepare(request)
        for piece in self.pieces:
            await response.write(piece)
            await asyncio.sleep(0.002)  # apart, so that the proxy reads them apart
        await response.write_eof()
        return response

    def __enter__(self) -> RawUpstream:
        async def start() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            host, port = self._runner.addresses[0][:2]
            self.url = f"http://{host}:{port}"

        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


@pytest.fixture(scope="module")
def raw_pool() -> Iterator[tuple[Pool, RawUpstream]]:
    """A proxy without retries in front of :class:`RawUpstream`, with a short idle wait."""
    with RawUpstream() as raw:
        policy = with_timeouts(without_retries(make_policy(raw.url)), idle=2.0, quiet=2.0)
        with serving(policy) as url:
            p = Pool(url)
            yield p, raw
            p.close()


def with_timeouts(policy: Policy, **changes: float) -> Policy:
    upstream = policy.config.upstream
    return with_section(policy, "upstream",
                        timeouts=msgspec.structs.replace(upstream.timeouts, **changes))


def sse(name: str, data: str) -> bytes:
    return f"event: {name}\ndata: {data}\n\n".encode()


SSE_EVENTS = [
    sse("message_start", '{"type":"message_start","message":{"id":"msg_1","type":"message",'
        '"role":"assistant","content":[],"model":"claude-sonnet-4-6","usage":'
        '{"input_tokens":12,"output_tokens":1}}}'),
    sse("content_block_start", '{"type":"content_block_start","index":0,"content_block":'
        '{"type":"text","text":""}}'),
    sse("ping", '{"type": "ping"}'),
    sse("content_block_delta", '{"type":"content_block_delta","index":0,"delta":'
        '{"type":"text_delta","text":"Hi"}}'),
    sse("content_block_stop", '{"type":"content_block_stop","index":0  }'),
    sse("message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        '"usage":{"output_tokens":5}}'),
    sse("message_stop", '{"type":"message_stop"}'),
    sse("error", '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'),
    sse("message_start", '{"type":"message_start","message":{"usage":{"input_tokens":"x"}}'),
    sse("message_delta", "{not json"),
    sse("content_block_start", "[1, 2"),
    sse("future_event", '{"type":"future_event"}'),
    b": a comment\n\n",
    b"data: {}\n\n",
    b"event: \xff\xfe\ndata: \x00\n\n",
]
HUGE_EVENT = sse("content_block_delta", '{"type":"content_block_delta","index":0,"delta":'
                 '{"type":"text_delta","text":"' + "z" * (1 << 21) + '"}}')


def ended_properly(stream: bytes) -> bool:
    """Whether a stream holds a complete ``message_stop`` or ``error`` event (a reference
    reading, independent of the proxy's)."""
    text = stream.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    for block in text.split(b"\n\n")[:-1]:
        names = [line[6:].strip() for line in block.split(b"\n") if line.startswith(b"event:")]
        if names and names[-1] in (b"message_stop", b"error"):
            return True
    return False


@fuzz(150)
@given(events=st.lists(st.sampled_from(SSE_EVENTS), min_size=1, max_size=10),
       huge=st.integers(0, 20), newline=st.sampled_from([b"\n", b"\r\n", b"\r"]),
       cut=st.none() | st.integers(0, 2000), splits=st.lists(st.integers(1, 2000), max_size=6))
def test_whatever_the_upstream_streams_reaches_the_client_whole_then_ends(
        fake: FakeUpstream, raw_pool: tuple[Pool, RawUpstream], events: list[bytes], huge: int,
        newline: bytes, cut: int | None, splits: list[int]) -> None:
    """Every upstream byte is relayed as it came; a stream that did not end properly (truncated,
    no ``message_stop``) gets one ``error`` event from the proxy after it; nothing hangs, leaks
    or crashes."""
    pool, raw = raw_pool
    if huge == 0:
        events = [*events[:1], HUGE_EVENT, *events[1:]]
    stream = b"".join(events).replace(b"\n", newline)
    if cut is not None:
        stream = stream[:cut]
    points = sorted({p for p in splits if p < len(stream)})
    raw.pieces = [stream[a:b] for a, b in itertools.pairwise([0, *points, len(stream)])]
    body = json.dumps({**GOOD, "stream": True}).encode()
    started = time.monotonic()
    answer = pool.send(Sent("POST", "/v1/messages", body, headers_for()))
    assert time.monotonic() - started < 10
    assert answer is not None
    if not stream:
        # An empty 200 stream: nothing to relay, the proxy's own shaped 502.
        assert answer.status == 502 and json.loads(answer.body)["type"] == "error"
        return
    assert answer.status == 200, answer
    assert answer.body.startswith(stream), "the upstream's bytes were not relayed untouched"
    added = answer.body[len(stream):]
    note(f"added by the proxy: {added[:300]!r}")
    assert not LEAKS.search(added.decode("utf-8", "replace"))
    if ended_properly(stream):
        assert added == b""
    else:
        # After a line left open, a blank line first, so the error event stands alone.
        assert added.lstrip(b"\r\n").startswith(b"event: error\ndata: ")
        error = json.loads(added.split(b"data: ", 1)[1])
        assert error["type"] == "error" and error["error"]["type"] == "api_error"


# ---------------------------------------------------------------------- how the client sends


@pytest.fixture(scope="module")
def impatient(fake_server: FakeUpstream) -> Iterator[str]:
    """A proxy that gives clients 0.5 s to send their body and holds at most 4 kB of bodies."""
    policy = with_section(make_policy(fake_server.url), "server", body_timeout=0.5,
                          max_buffered_bytes=4096)
    with running_proxy(policy) as url:
        yield url


def raw_request(url: str, head: bytes) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), 10)
    sock.sendall(head)
    return sock


def read_answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and the whole answer (head and a body of content-length) of a raw request."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data or len(data) < _answer_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data


def _answer_length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return len(head) + 4 + (int(found.group(1)) if found else 0)


def head_for(url: str, length: int | None) -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return (f"POST /v1/messages HTTP/1.1\r\nhost: {urlsplit(url).netloc}\r\n"
            f"x-api-key: {API_KEY}\r\nanthropic-version: 2023-06-01\r\n"
            f"content-type: application/json\r\n{framing}\r\n\r\n").encode()


def test_a_slow_sender_gets_a_408_and_frees_its_place(impatient: str) -> None:
    body = json.dumps(GOOD).encode()
    sock = raw_request(impatient, head_for(impatient, len(body)) + body[:10])
    started = time.monotonic()
    status, data = read_answer(sock)
    sock.close()
    assert status == 408, data
    assert 0.4 < time.monotonic() - started < 3
    assert b'"timeout_error"' in data and b"x-should-retry: true" in data.lower()
    state = RUNNING[impatient].state
    # Released just after the answer went out.
    assert wait_for(lambda: state.gate.requests == 0 and state.gate.bytes == 0, 3)


def test_a_chunked_body_is_held_by_the_gate_as_it_arrives(impatient: str) -> None:
    """Bodies without a length count against the byte bound as their chunks arrive: a second
    body past the bound is refused with a 529 that says when to come back."""
    first = raw_request(impatient, head_for(impatient, None) + b"bb8\r\n" + b" " * 3000 + b"\r\n")
    state = RUNNING[impatient].state
    deadline = time.monotonic() + 3
    while state.gate.bytes < 3000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert state.gate.bytes >= 3000
    second = raw_request(impatient, head_for(impatient, None) + b"7d0\r\n" + b" " * 2000 + b"\r\n")
    status, data = read_answer(second)
    second.close()
    assert status == 529, data
    assert b"retry-after: 1" in data.lower() and b"x-should-retry: true" in data.lower()
    rest = json.dumps(GOOD).encode()
    first.sendall(f"{len(rest):x}\r\n".encode() + rest + b"\r\n0\r\n\r\n")
    status, data = read_answer(first)
    first.close()
    assert status == 200, data  # leading whitespace is valid JSON
    assert wait_for(lambda: state.gate.bytes == 0 and state.gate.requests == 0, 3)


@fuzz(40)
@given(splits=st.lists(st.integers(1, 200), max_size=8), pause=st.sampled_from([0, 0.005, 0.03]))
def test_a_body_in_any_pieces_at_any_pace_is_read_whole(
        fake: FakeUpstream, impatient: str, splits: list[int], pause: float) -> None:
    body = json.dumps(GOOD).encode()
    points = sorted({p for p in splits if p < len(body)})
    pieces = [body[a:b] for a, b in itertools.pairwise([0, *points, len(body)])]
    sock = raw_request(impatient, head_for(impatient, None))
    for piece in pieces:
        sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        time.sleep(pause)
    sock.sendall(b"0\r\n\r\n")
    status, data = read_answer(sock)
    sock.close()
    assert status == 200, data


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/v1/messages", "POST"),
    ("PUT", "/v1/messages/count_tokens", "POST"),
    ("POST", "/v1/models", "GET"),
    ("DELETE", "/metrics", "GET"),
])
def test_a_405_says_which_methods_are_allowed(fake: FakeUpstream, pool: Pool, method: str,
                                              path: str, allow: str) -> None:
    answer = pool.send(Sent(method, path, b"{}" if method != "GET" else None, headers_for()))
    assert answer is not None and answer.status == 405, answer
    assert json.loads(answer.body)["error"]["type"] == "invalid_request_error"
    assert allow in (answer.header("allow") or "").replace(" ", "").split(",")
    assert answer.header("x-should-retry") == "false"
