"""A scriptable fake of api.anthropic.com, served over real HTTP on loopback.

The fake follows the wire contract in ``shared/anthropic-wire-spec.md`` (sections 1-5 and 8):
the same endpoints, validation, headers, error bodies and SSE framing that the official SDKs
expect. Tests queue behaviours with :meth:`FakeUpstream.script` (a normal reply, an HTTP error,
a stall, a dropped connection, an in-stream error or a malformed body) and then inspect
:attr:`FakeUpstream.received` and :attr:`FakeUpstream.billed`.

Three ways to run it:

* ``await FakeUpstream().start()`` inside an event loop;
* ``with running_fake() as fake:`` from synchronous tests (own thread and loop);
* ``python -m router.fake.upstream --port 0`` for benchmarks and demos.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import hashlib
import json
import re
import secrets
import signal
import socket
import struct
import threading
import uuid
from collections import deque
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import msgspec
from aiohttp import web

__all__ = [
    "Behaviour",
    "Drop",
    "Fail",
    "FakeUpstream",
    "Malformed",
    "Received",
    "Reply",
    "Stall",
    "StreamError",
    "estimate_input_tokens",
    "main",
    "running_fake",
]

SUPPORTED_VERSIONS = frozenset({"2023-06-01", "2026-10-21"})
_V2026 = "2026-10-21"
# The 2026-10-21 version removed the sampling knobs; sending any of them is a 400.
_REMOVED_IN_2026 = ("temperature", "top_p", "top_k")
# The real API refuses bodies over 32 MB with a 413 (spec §1.1).
_MAX_BODY = 32 * 1024 * 1024
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_INPUT_JSON_CHUNK = 10
_SSE_HEADERS = MappingProxyType(
    {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
)
_PING = b'{"type": "ping"}'

_DEFAULT_MESSAGES: Mapping[int, str] = MappingProxyType(
    {
        400: "Invalid request",
        401: "invalid x-api-key",
        402: "Your credit balance is too low to access the Anthropic API.",
        403: "Your API key does not have permission to use the specified resource.",
        404: "Not found",
        408: "Request timed out",
        409: "Conflict",
        413: "Request exceeds the maximum allowed number of bytes.",
        429: "Number of request tokens has exceeded your per-minute rate limit.",
        500: "Internal server error",
        502: "Bad gateway",
        503: "Service unavailable",
        504: "Request timeout",
        529: "Overloaded",
    }
)

# Status the API would have used for an error type; StreamError falls back to it when the
# request was not streamed, since then there is no SSE channel to carry the error event.
_STATUS_FOR_TYPE: Mapping[str, int] = MappingProxyType(
    {
        "invalid_request_error": 400,
        "authentication_error": 401,
        "billing_error": 402,
        "permission_error": 403,
        "not_found_error": 404,
        "conflict_error": 409,
        "request_too_large": 413,
        "rate_limit_error": 429,
        "api_error": 500,
        "timeout_error": 504,
        "overloaded_error": 529,
    }
)

# Python's http module has no phrase for 529; an empty reason phrase is legal but some
# clients print it, so give it the one the API's edge uses.
_REASONS: Mapping[int, str] = MappingProxyType({529: "Overloaded"})


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Received:
    """One HTTP request the fake received, recorded before any validation.

    Attributes:
        method: The HTTP method, e.g. ``"POST"``.
        path: The request path without the query, e.g. ``"/v1/messages"``.
        query: The raw query string without ``?``, e.g. ``"beta=true"`` or ``""``.
        headers: The request headers in arrival order, with their original case.
        body: The raw request body.
    """

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """Returns the first header called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def json(self) -> Any:
        """Returns the body parsed as JSON.

        Raises:
            ValueError: The body is not valid JSON.
        """
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """A successful answer; the same content and usage whether streamed or not.

    Attributes:
        text: The text block. None gives a deterministic default derived from the request;
            ``""`` leaves the text block out.
        tool_use: ``{"name": ..., "input": {...}}`` (optionally ``"id"``) adds a tool_use block
            after the text and makes the default stop_reason ``tool_use``.
        thinking: Adds a thinking block, with a fake signature, before the text.
        usage: Overrides usage fields; nested objects (``cache_creation``,
            ``server_tool_use``, ``output_tokens_details``) are merged key by key and a value
            of None removes the field. Fields not given get computed defaults.
        event_delay: Seconds to sleep between SSE events (streaming only). 0 uses the
            fake's ``default_event_delay``.
        stop_reason: Defaults to ``end_turn``, or ``tool_use`` when ``tool_use`` is set.
        headers: Extra response headers; they override the fake's own, and ``""`` removes one.
        pad_json: When streaming, pad some data JSON with spaces before the closing brace,
            the way the SDK's recorded fixtures do (``{"type":"content_block_stop","index":0  }``).
    """

    text: str | None = None
    tool_use: dict[str, Any] | None = None
    thinking: str | None = None
    usage: dict[str, Any] | None = None
    event_delay: float = 0.0
    stop_reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    pad_json: bool = False


@dataclass(frozen=True)
class Fail:
    """An HTTP error answered before any body, without validating the request.

    Attributes:
        status: The HTTP status, e.g. 529.
        error_type: The ``error.type`` string, e.g. ``"overloaded_error"``.
        message: The ``error.message``; empty picks a default for the status.
        headers: Extra response headers, e.g. ``{"retry-after": "1"}`` or
            ``{"x-should-retry": "false"}``. They win over the fake's own; ``""`` omits a
            header (e.g. ``{"retry-after": ""}`` for a 429 without it).
    """

    status: int
    error_type: str
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.message:
            # Frozen dataclass: the default depends on status, so it is filled in here.
            object.__setattr__(self, "message", _DEFAULT_MESSAGES.get(self.status, "Error"))


@dataclass(frozen=True)
class Stall:
    """Sleep before answering, then behave like ``then``.

    Attributes:
        seconds: How long to wait before doing anything else.
        then: The behaviour that follows; None means ``Reply()``.
    """

    seconds: float
    then: Behaviour | None = None


@dataclass(frozen=True)
class Drop:
    """Reset the TCP connection abruptly.

    Attributes:
        after_events: None resets before any response byte is sent. N (streaming) sends the
            200 headers and the first N SSE events, then resets; for a non-streamed request
            any N resets right after the 200 headers.
    """

    after_events: int | None = None


@dataclass(frozen=True)
class StreamError:
    """Send N normal SSE events, then an ``error`` event, then end the stream cleanly.

    A non-streamed request gets the HTTP error the API uses for ``error_type`` instead
    (e.g. 529 for ``overloaded_error``).

    Attributes:
        after_events: How many events of the normal stream precede the error.
        error_type: The ``error.type`` of the error event.
        message: The ``error.message`` of the error event.
    """

    after_events: int
    error_type: str = "overloaded_error"
    message: str = "Overloaded"


@dataclass(frozen=True)
class Malformed:
    """Answer with this raw body, status and content type, without validating the request.

    Attributes:
        body: The exact response body.
        status: The HTTP status.
        content_type: The Content-Type header value.
    """

    body: bytes
    status: int = 200
    content_type: str = "application/json"


# Anything FakeUpstream.script() accepts; each item answers exactly one POST /v1/messages.
Behaviour = Reply | Fail | Stall | Drop | StreamError | Malformed


# --------------------------------------------------------------------------- helpers


def _random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_BASE62) for _ in range(length))


def _stable_id(prefix: str, seed: bytes, length: int = 24) -> str:
    number = int.from_bytes(hashlib.sha256(seed).digest(), "big")
    chars = []
    for _ in range(length):
        number, rest = divmod(number, 62)
        chars.append(_BASE62[rest])
    return prefix + "".join(chars)


def _encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def _default_header(headers: dict[str, str], name: str, value: str) -> None:
    if _header(headers, name) is None:
        headers[name] = value


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """Returns the fake's deterministic input-token estimate for a request body.

    The same number is used for ``usage.input_tokens`` and for ``count_tokens``, so tests
    can predict one from the other.

    Args:
        body: The decoded request body (Messages or count_tokens).

    Returns:
        ``len(compact JSON of system, messages and tools) // 4``, at least 1.
    """
    relevant = {key: body[key] for key in ("system", "messages", "tools") if key in body}
    return max(1, len(_encode(relevant)) // 4)


def _words(text: str) -> list[str]:
    """Splits text into word-sized pieces that concatenate back to the original."""
    if not text:
        return []
    pieces = re.findall(r"\s*\S+", text)
    consumed = sum(len(piece) for piece in pieces)
    if consumed < len(text):
        # Trailing whitespace has no word to lean on; keep it so the deltas add up.
        if pieces:
            pieces[-1] += text[consumed:]
        else:
            pieces = [text]
    return pieces


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def _fake_signature(thinking: str) -> str:
    digest = hashlib.sha256(b"fake-thinking-signature\0" + thinking.encode()).digest()
    return base64.b64encode(b"fake-signature:" + digest).decode()


def _merge_usage(defaults: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    usage = copy.deepcopy(defaults)
    for key, value in override.items():
        if value is None:
            usage.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(usage.get(key), dict):
            usage[key] = {**usage[key], **value}
        else:
            usage[key] = copy.deepcopy(value)
    # Keep the cache total and its per-TTL split consistent when only one side was given.
    total = override.get("cache_creation_input_tokens")
    split = override.get("cache_creation")
    if isinstance(total, int) and split is None and "cache_creation" in usage:
        usage["cache_creation"] = {
            "ephemeral_5m_input_tokens": total,
            "ephemeral_1h_input_tokens": 0,
        }
    elif isinstance(split, Mapping) and "cache_creation_input_tokens" not in override:
        parts = usage["cache_creation"].values()
        usage["cache_creation_input_tokens"] = sum(v for v in parts if isinstance(v, int))
    return usage


# Fields a message_start carries (the input side) and fields a message_delta repeats as
# cumulative totals; the SDK's accumulator overwrites exactly the latter (spec §4.5).
_START_USAGE_KEYS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation",
    "output_tokens",
    "service_tier",
    "inference_geo",
    "speed",
)
_DELTA_USAGE_KEYS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
    "output_tokens_details",
    "server_tool_use",
)


@dataclass(frozen=True)
class _Answer:
    """A fully computed answer, rendered either as JSON or as an SSE event list."""

    message: dict[str, Any]
    usage: dict[str, Any]


@dataclass(frozen=True)
class _Event:
    frame: bytes
    # Cumulative usage as of this event if it carries usage (message_start/_delta), else None.
    usage: dict[str, Any] | None = None


class _Invalid(Exception):
    """A request the API would refuse; carries the error response to send."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclass(frozen=True)
class _ModelSpec:
    id: str
    display_name: str
    created_at: str
    max_input_tokens: int
    max_tokens: int
    line: str
    lifecycle: str = "active"
    deprecated_at: str | None = None
    retires_at: str | None = None
    adaptive_only: bool = False
    xhigh: bool = True


# Newest first, the order the real list endpoint uses.
_CATALOG: tuple[_ModelSpec, ...] = (
    _ModelSpec(
        "claude-haiku-5-5",
        "Claude Haiku 5.5",
        "2026-10-07T00:00:00Z",
        1_000_000,
        128_000,
        "haiku",
        adaptive_only=True,
    ),
    _ModelSpec(
        "claude-opus-5-5",
        "Claude Opus 5.5",
        "2026-09-22T00:00:00Z",
        1_000_000,
        128_000,
        "opus",
        adaptive_only=True,
    ),
    _ModelSpec(
        "claude-opus-5",
        "Claude Opus 5",
        "2026-07-24T00:00:00Z",
        1_000_000,
        128_000,
        "opus",
        adaptive_only=True,
    ),
    _ModelSpec(
        "claude-sonnet-5",
        "Claude Sonnet 5",
        "2026-06-30T00:00:00Z",
        1_000_000,
        128_000,
        "sonnet",
        adaptive_only=True,
    ),
    _ModelSpec(
        "claude-opus-4-8",
        "Claude Opus 4.8",
        "2026-05-28T00:00:00Z",
        1_000_000,
        128_000,
        "opus",
        adaptive_only=True,
    ),
    _ModelSpec(
        "claude-opus-4-7",
        "Claude Opus 4.7",
        "2026-04-16T00:00:00Z",
        1_000_000,
        128_000,
        "opus",
        adaptive_only=True,
    ),
    _ModelSpec(
        "claude-sonnet-4-6",
        "Claude Sonnet 4.6",
        "2026-02-17T00:00:00Z",
        1_000_000,
        128_000,
        "sonnet",
        xhigh=False,
    ),
    _ModelSpec(
        "claude-haiku-4-5",
        "Claude Haiku 4.5",
        "2025-10-15T00:00:00Z",
        200_000,
        64_000,
        "haiku",
        xhigh=False,
    ),
    _ModelSpec(
        "claude-sonnet-4-5",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
        200_000,
        64_000,
        "sonnet",
        lifecycle="deprecated",
        deprecated_at="2026-05-15T00:00:00Z",
        retires_at="2026-11-30T00:00:00Z",
        xhigh=False,
    ),
)
# Dated ids resolve to their alias entry, as the real GET /v1/models/{id} does.
_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "claude-haiku-4-5-20251001": "claude-haiku-4-5",
        "claude-sonnet-4-5-20250929": "claude-sonnet-4-5",
    }
)


def _model_info(spec: _ModelSpec) -> dict[str, Any]:
    yes = {"supported": True}
    no = {"supported": False}
    return {
        "type": "model",
        "id": spec.id,
        "display_name": spec.display_name,
        "created_at": spec.created_at,
        "max_input_tokens": spec.max_input_tokens,
        "max_tokens": spec.max_tokens,
        "lifecycle": spec.lifecycle,
        "deprecated_at": spec.deprecated_at,
        "retires_at": spec.retires_at,
        "line": spec.line,
        "capabilities": {
            "batch": yes,
            "citations": yes,
            "code_execution": yes,
            "context_management": {
                "supported": True,
                "clear_thinking_20251015": yes,
                "clear_tool_uses_20250919": yes,
                "compact_20260112": yes,
            },
            "effort": {
                "supported": True,
                "low": yes,
                "medium": yes,
                "high": yes,
                "max": yes,
                "xhigh": yes if spec.xhigh else no,
            },
            "image_input": yes,
            "pdf_input": yes,
            "server_tools": {"supported": True, "code_execution": yes, "web_search": yes},
            "structured_outputs": yes,
            "thinking": {
                "supported": True,
                "types": {
                    "adaptive": yes,
                    "between_tools": yes if spec.adaptive_only else no,
                    "disabled": yes,
                    "enabled": no if spec.adaptive_only else yes,
                },
            },
        },
    }


# --------------------------------------------------------------------------- the server


class FakeUpstream:
    """An HTTP server on loopback that imitates api.anthropic.com.

    Every ``POST /v1/messages`` consumes one scripted behaviour (FIFO), or ``Reply()`` when
    the queue is empty. ``Fail``, ``Malformed`` and ``Drop(after_events=None)`` act before
    the request is validated (like a failure in front of the API); ``Reply``,
    ``StreamError`` and ``Drop(after_events=N)`` act only on requests that pass validation.
    The other endpoints ignore the script.

    ``received``, ``billed`` and ``script()`` are safe to use from any thread.
    """

    def __init__(
        self,
        *,
        api_keys: Collection[str] | None = None,
        default_event_delay: float = 0.0,
        ping_every: int = 0,
        history_limit: int | None = None,
    ) -> None:
        """Creates a stopped fake.

        Args:
            api_keys: Accepted API keys; None accepts any non-empty key.
            default_event_delay: Seconds between SSE events when the Reply sets none.
            ping_every: If > 0, also send a ping after every this many other events.
            history_limit: Keep at most this many ``received``/``billed`` records (oldest
                dropped), so long benchmark runs stay bounded; None keeps all.
        """
        self._api_keys = frozenset(api_keys) if api_keys is not None else None
        self._default_event_delay = default_event_delay
        self._ping_every = ping_every
        self._lock = threading.Lock()
        self._queue: deque[Behaviour] = deque()
        self._received: deque[Received] = deque(maxlen=history_limit)
        self._billed: deque[dict[str, Any]] = deque(maxlen=history_limit)
        self._sent: deque[bytes] = deque(maxlen=history_limit)
        self._org_id = str(uuid.uuid4())
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # ---- test-facing API

    @property
    def received(self) -> list[Received]:
        """A snapshot of every request received, in order, across all endpoints."""
        with self._lock:
            return list(self._received)

    @property
    def billed(self) -> list[dict[str, Any]]:
        """A snapshot of the usage of every message answer actually produced.

        A 200 JSON answer contributes its usage. A stream contributes the cumulative usage
        as of the last ``message_delta`` sent, or of ``message_start`` if it was cut before
        any ``message_delta``; a stream cut before ``message_start`` contributes nothing.
        """
        with self._lock:
            return copy.deepcopy(list(self._billed))

    @property
    def sent(self) -> list[bytes]:
        """A snapshot of the body bytes of every message answer written (JSON or SSE), in order.

        For a stream, the bytes written up to its end or its cut; tests compare them with what
        a client received through the proxy.
        """
        with self._lock:
            return list(self._sent)

    def _record_sent(self, data: bytes) -> None:
        with self._lock:
            self._sent.append(data)

    def script(self, *behaviours: Behaviour) -> None:
        """Queues behaviours for the next ``POST /v1/messages`` requests, one each."""
        with self._lock:
            self._queue.extend(behaviours)

    def clear(self) -> None:
        """Forgets received requests, billed usage and any queued behaviours."""
        with self._lock:
            self._queue.clear()
            self._received.clear()
            self._billed.clear()
            self._sent.clear()

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:PORT``.

        Raises:
            RuntimeError: The fake is not started.
        """
        if self._url is None:
            raise RuntimeError("FakeUpstream is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Starts serving; port 0 picks a free port.

        Returns:
            The base URL.
        """
        if self._runner is not None:
            raise RuntimeError("FakeUpstream is already started")
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a stalled handler dies with its client instead of holding
        # stop() up; the short shutdown_timeout keeps test teardown fast.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._runner = runner
        self._url = f"http://{shown}:{bound_port}"
        return self._url

    async def stop(self) -> None:
        """Stops serving and closes open connections; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ---- bookkeeping

    def _record(self, request: web.Request, body: bytes) -> None:
        headers = [
            (key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for key, value in request.raw_headers
        ]
        item = Received(
            method=request.method,
            path=request.path,
            query=request.rel_url.raw_query_string,
            headers=headers,
            body=body,
        )
        with self._lock:
            self._received.append(item)

    def _next_behaviour(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else Reply()

    def _bill(self, usage: dict[str, Any]) -> None:
        with self._lock:
            self._billed.append(usage)

    def _unbill(self, usage: dict[str, Any]) -> None:
        with self._lock:
            # Identity, not equality: two answers may carry equal usage.
            for index, entry in enumerate(self._billed):
                if entry is usage:
                    del self._billed[index]
                    break

    def _rebill(self, entry: dict[str, Any], usage: dict[str, Any]) -> None:
        with self._lock:
            entry.clear()
            entry.update(copy.deepcopy(usage))

    # ---- responses

    def _headers(self, extra: Mapping[str, str] | None = None, **more: str) -> dict[str, str]:
        headers = {"request-id": _random_id("req_"), "anthropic-organization-id": self._org_id}
        headers.update(more)
        for key, value in (extra or {}).items():
            # Case-insensitive override so a scripted "Retry-After" replaces "retry-after".
            for existing in [k for k in headers if k.lower() == key.lower()]:
                del headers[existing]
            if value != "":
                headers[key] = value
        return headers

    def _error(
        self,
        status: int,
        error_type: str,
        message: str,
        extra: Mapping[str, str] | None = None,
    ) -> web.Response:
        defaults: dict[str, str] = {}
        if status == 429:
            defaults["retry-after"] = "1"
        headers = self._headers({**defaults, **(extra or {})})
        # The body repeats the header's request id, as the real API does.
        request_id = _header(headers, "request-id")
        payload: dict[str, Any] = {
            "type": "error",
            "error": {"type": error_type, "message": message},
        }
        if request_id is not None:
            payload["request_id"] = request_id
        _default_header(headers, "Content-Type", "application/json")
        return web.Response(
            status=status, reason=_REASONS.get(status), body=_encode(payload), headers=headers
        )

    def _ratelimit_headers(self, usage: Mapping[str, Any]) -> dict[str, str]:
        now = datetime.now(UTC)
        reset = _rfc3339(now + timedelta(seconds=1))
        used_in = int(usage.get("input_tokens") or 0)
        used_out = int(usage.get("output_tokens") or 0)
        tokens_limit, in_limit, out_limit = 2_000_000, 1_600_000, 400_000

        def remaining(limit: int, used: int) -> str:
            # The API rounds the remaining token budget to the nearest thousand (spec §2.2).
            return str(max(0, round((limit - used) / 1000) * 1000))

        return {
            "anthropic-ratelimit-requests-limit": "4000",
            "anthropic-ratelimit-requests-remaining": "3999",
            "anthropic-ratelimit-requests-reset": reset,
            "anthropic-ratelimit-tokens-limit": str(tokens_limit),
            "anthropic-ratelimit-tokens-remaining": remaining(tokens_limit, used_in + used_out),
            "anthropic-ratelimit-tokens-reset": reset,
            "anthropic-ratelimit-input-tokens-limit": str(in_limit),
            "anthropic-ratelimit-input-tokens-remaining": remaining(in_limit, used_in),
            "anthropic-ratelimit-input-tokens-reset": reset,
            "anthropic-ratelimit-output-tokens-limit": str(out_limit),
            "anthropic-ratelimit-output-tokens-remaining": remaining(out_limit, used_out),
            "anthropic-ratelimit-output-tokens-reset": reset,
        }

    # ---- dispatch

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._record(request, b"")
            return self._error(413, "request_too_large", _DEFAULT_MESSAGES[413])
        self._record(request, body)
        method, path = request.method, request.path
        try:
            if path == "/v1/messages" and method == "POST":
                return await self._messages(request, body)
            if path == "/v1/messages/count_tokens" and method == "POST":
                return self._count_tokens(request, body)
            if path == "/v1/models" and method == "GET":
                return self._list_models(request)
            if path.startswith("/v1/models/") and method == "GET" and path.count("/") == 3:
                return self._get_model(request, path.removeprefix("/v1/models/"))
            return self._error(404, "not_found_error", "Not Found")
        except _Invalid as exc:
            return self._error(exc.status, exc.error_type, exc.message)

    # ---- validation

    def _check_headers(self, request: web.Request) -> str:
        """Checks auth and version; returns the anthropic-version."""
        key = request.headers.get("x-api-key", "")
        if not key:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer":
                key = token.strip()
        if not key or (self._api_keys is not None and key not in self._api_keys):
            raise _Invalid(401, "authentication_error", "invalid x-api-key")
        version = request.headers.get("anthropic-version")
        if version is None:
            raise _Invalid(400, "invalid_request_error", "anthropic-version: header is required")
        if version not in SUPPORTED_VERSIONS:
            raise _Invalid(
                400,
                "invalid_request_error",
                f"anthropic-version: unsupported version {version!r}; "
                f"expected one of {', '.join(sorted(SUPPORTED_VERSIONS))}",
            )
        return version

    @staticmethod
    def _check_body(raw: bytes, version: str, *, needs_max_tokens: bool) -> dict[str, Any]:
        try:
            body = msgspec.json.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            raise _Invalid(
                400, "invalid_request_error", "There was an error parsing the body of your request"
            ) from None
        if not isinstance(body, dict):
            raise _Invalid(400, "invalid_request_error", "Input should be a valid dictionary")
        required: list[tuple[str, type, str]] = [("model", str, "a valid string")]
        if needs_max_tokens:
            required.append(("max_tokens", int, "a valid integer"))
        required.append(("messages", list, "a valid list"))
        for name, kind, what in required:
            if name not in body:
                raise _Invalid(400, "invalid_request_error", f"{name}: Field required")
            value = body[name]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise _Invalid(400, "invalid_request_error", f"{name}: Input should be {what}")
        if needs_max_tokens and body["max_tokens"] < 0:
            raise _Invalid(
                400,
                "invalid_request_error",
                "max_tokens: Input should be greater than or equal to 0",
            )
        if "stream" in body and not isinstance(body["stream"], bool):
            raise _Invalid(400, "invalid_request_error", "stream: Input should be a valid boolean")
        if not body["messages"]:
            raise _Invalid(
                400, "invalid_request_error", "messages: at least one message is required"
            )
        if version == _V2026:
            for name in _REMOVED_IN_2026:
                if name in body:
                    raise _Invalid(
                        400, "invalid_request_error", f"{name}: Extra inputs are not permitted"
                    )
            FakeUpstream._check_2026_blocks(body["messages"])
        model = body["model"]
        if not model.startswith("claude"):
            raise _Invalid(404, "not_found_error", f"model: {model}")
        return body

    @staticmethod
    def _check_2026_blocks(messages: list[Any]) -> None:
        # The two content rules the 2026-10-21 version added (spec §0.3).
        for m_index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), list):
                continue
            role = message.get("role")
            for b_index, block in enumerate(message["content"]):
                if not isinstance(block, dict):
                    continue
                where = f"messages.{m_index}.content.{b_index}"
                if role == "assistant" and block.get("type") == "document":
                    raise _Invalid(
                        400,
                        "invalid_request_error",
                        f"{where}: document blocks are not permitted in assistant messages",
                    )
                if role == "user" and block.get("type") == "text" and block.get("citations"):
                    raise _Invalid(
                        400,
                        "invalid_request_error",
                        f"{where}.citations: citations are not permitted in user messages",
                    )

    # ---- /v1/messages

    async def _messages(self, request: web.Request, raw: bytes) -> web.StreamResponse:
        behaviour = self._next_behaviour()
        while isinstance(behaviour, Stall):
            await asyncio.sleep(behaviour.seconds)
            behaviour = behaviour.then if behaviour.then is not None else Reply()
        if isinstance(behaviour, Fail):
            return self._error(
                behaviour.status, behaviour.error_type, behaviour.message, behaviour.headers
            )
        if isinstance(behaviour, Malformed):
            return web.Response(
                status=behaviour.status,
                reason=_REASONS.get(behaviour.status),
                body=behaviour.body,
                headers=self._headers({"Content-Type": behaviour.content_type}),
            )
        if isinstance(behaviour, Drop) and behaviour.after_events is None:
            _reset(request)
            return web.Response()

        version = self._check_headers(request)
        body = self._check_body(raw, version, needs_max_tokens=True)
        stream = bool(body.get("stream", False))

        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        answer = _build_answer(body, reply)
        delay = reply.event_delay or self._default_event_delay
        headers = self._headers(reply.headers, **self._ratelimit_headers(answer.usage))

        if isinstance(behaviour, StreamError) and not stream:
            status = _STATUS_FOR_TYPE.get(behaviour.error_type, 500)
            return self._error(status, behaviour.error_type, behaviour.message)
        if isinstance(behaviour, Drop) and not stream:
            response = web.StreamResponse(status=200, headers=headers)
            response.content_type = "application/json"
            response.content_length = len(_encode(answer.message))
            await response.prepare(request)  # sends the status line and headers at once
            _reset(request)
            return response
        if not stream:
            if request.transport is None or request.transport.is_closing():
                return web.Response()
            self._bill(copy.deepcopy(answer.usage))
            _default_header(headers, "Content-Type", "application/json")
            encoded = _encode(answer.message)
            self._record_sent(encoded)
            return web.Response(body=encoded, headers=headers)

        cut: int | None = None
        error: StreamError | None = None
        if isinstance(behaviour, Drop):
            cut = behaviour.after_events
        elif isinstance(behaviour, StreamError):
            cut, error = behaviour.after_events, behaviour
        return await self._stream(
            request, headers, self._events(answer, reply.pad_json), delay, cut, error
        )

    def _events(self, answer: _Answer, pad: bool) -> list[_Event]:
        message, usage = answer.message, answer.usage
        start_usage = {k: usage[k] for k in _START_USAGE_KEYS if k in usage}
        start_usage["output_tokens"] = min(1, int(usage.get("output_tokens", 1)))
        delta_usage = {k: usage[k] for k in _DELTA_USAGE_KEYS if k in usage}

        def frame(name: str, data: Any, padding: int = 0) -> bytes:
            encoded = _encode(data)
            if pad and padding:
                encoded = encoded[:-1] + b" " * padding + b"}"
            return b"event: " + name.encode() + b"\ndata: " + encoded + b"\n\n"

        start_message = {
            **{k: v for k, v in message.items() if k not in ("content", "usage")},
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "stop_details": None,
            "usage": start_usage,
        }
        core: list[_Event] = [
            _Event(
                frame("message_start", {"type": "message_start", "message": start_message}, 15),
                usage=copy.deepcopy(start_usage),
            )
        ]
        ping = _Event(b"event: ping\ndata: " + _PING + b"\n\n")
        pinged = False
        for index, block in enumerate(message["content"]):
            core.append(
                _Event(
                    frame(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": index,
                            "content_block": _empty_block(block),
                        },
                    )
                )
            )
            if not pinged:
                # Captures put the first ping right after the first content_block_start.
                core.append(ping)
                pinged = True
            for delta in _deltas(block):
                core.append(
                    _Event(
                        frame(
                            "content_block_delta",
                            {"type": "content_block_delta", "index": index, "delta": delta},
                            1 if delta["type"] == "signature_delta" else 0,
                        )
                    )
                )
            core.append(
                _Event(
                    frame("content_block_stop", {"type": "content_block_stop", "index": index}, 2)
                )
            )
        if not pinged:
            core.insert(1, ping)
        final_usage = {**start_usage, **copy.deepcopy(delta_usage)}
        core.append(
            _Event(
                frame(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {
                            "stop_reason": message["stop_reason"],
                            "stop_sequence": message["stop_sequence"],
                            "stop_details": message["stop_details"],
                        },
                        "usage": delta_usage,
                    },
                    4,
                ),
                usage=final_usage,
            )
        )
        core.append(_Event(frame("message_stop", {"type": "message_stop"}, 6)))
        if self._ping_every <= 0:
            return core
        events: list[_Event] = []
        since_ping = 0
        for event, following in zip(core, [*core[1:], None], strict=True):
            events.append(event)
            if event is ping:
                since_ping = 0
                continue
            since_ping += 1
            # Never after message_stop, and never twice in a row.
            if since_ping >= self._ping_every and following not in (None, ping):
                events.append(ping)
                since_ping = 0
        return events

    async def _stream(
        self,
        request: web.Request,
        headers: dict[str, str],
        events: list[_Event],
        delay: float,
        cut: int | None,
        error: StreamError | None,
    ) -> web.StreamResponse:
        for key, value in _SSE_HEADERS.items():
            _default_header(headers, key, value)
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(request)
        to_send = events if cut is None else events[: max(0, cut)]
        entry: dict[str, Any] | None = None
        sent_any = False
        written = bytearray()
        try:
            for event in to_send:
                if sent_any and delay > 0:
                    await asyncio.sleep(delay)
                # Bill before writing: a client that has seen the event must find it billed,
                # and the test thread may look the instant the bytes arrive.
                previous: dict[str, Any] | None = None
                if event.usage is not None:
                    if entry is None:
                        entry = copy.deepcopy(event.usage)
                        self._bill(entry)
                    else:
                        previous = copy.deepcopy(entry)
                        self._rebill(entry, event.usage)
                try:
                    # aiohttp hands each write straight to the socket (one chunk per event)
                    # and waits for the transport to drain once its buffer backs up.
                    await response.write(event.frame)
                    written += event.frame
                except ConnectionError:
                    if entry is not None and previous is not None:
                        self._rebill(entry, previous)
                    elif entry is not None and event.usage is not None:
                        self._unbill(entry)
                    raise
                sent_any = True
            if cut is not None and error is None:
                _reset(request)
                return response
            if error is not None:
                if sent_any and delay > 0:
                    await asyncio.sleep(delay)
                payload = {
                    "type": "error",
                    "error": {"type": error.error_type, "message": error.message},
                    "request_id": _header(headers, "request-id"),
                }
                frame = b"event: error\ndata: " + _encode(payload) + b"\n\n"
                await response.write(frame)
                written += frame
            await response.write_eof()
        except ConnectionError:
            # The client went away mid-stream; nothing more to send.
            pass
        finally:
            self._record_sent(bytes(written))
        return response

    # ---- other endpoints

    def _count_tokens(self, request: web.Request, raw: bytes) -> web.Response:
        version = self._check_headers(request)
        body = self._check_body(raw, version, needs_max_tokens=False)
        return web.Response(
            body=_encode({"input_tokens": estimate_input_tokens(body)}),
            headers=self._headers({"Content-Type": "application/json"}),
        )

    def _list_models(self, request: web.Request) -> web.Response:
        self._check_headers(request)
        query = request.rel_url.query
        raw_limit = query.get("limit", "20")
        try:
            limit = int(raw_limit)
        except ValueError:
            raise _Invalid(
                400, "invalid_request_error", "limit: Input should be a valid integer"
            ) from None
        if not 1 <= limit <= 1000:
            raise _Invalid(
                400,
                "invalid_request_error",
                "limit: Input should be greater than or equal to 1 and less than or equal to 1000",
            )
        wanted = set(query.getall("lifecycle[]", [])) | set(query.getall("lifecycle", []))
        # Without a filter the API lists active and deprecated models, not retired ones.
        wanted = wanted or {"active", "deprecated"}
        models = [spec for spec in _CATALOG if spec.lifecycle in wanted]
        ids = [spec.id for spec in models]
        after_id, before_id = query.get("after_id"), query.get("before_id")
        if after_id is not None and before_id is not None:
            raise _Invalid(
                400, "invalid_request_error", "Only one of after_id and before_id may be given"
            )
        for name, cursor in (("after_id", after_id), ("before_id", before_id)):
            if cursor is not None and cursor not in ids:
                raise _Invalid(400, "invalid_request_error", f"{name}: invalid cursor {cursor!r}")
        if before_id is not None:
            end = ids.index(before_id)
            start = max(0, end - limit)
            has_more = start > 0
        else:
            start = ids.index(after_id) + 1 if after_id is not None else 0
            end = min(len(models), start + limit)
            has_more = end < len(models)
        page = models[start:end]
        payload = {
            "data": [_model_info(spec) for spec in page],
            "has_more": has_more,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }
        return web.Response(
            body=_encode(payload), headers=self._headers({"Content-Type": "application/json"})
        )

    def _get_model(self, request: web.Request, model_id: str) -> web.Response:
        self._check_headers(request)
        wanted = _ALIASES.get(model_id, model_id)
        for spec in _CATALOG:
            if spec.id == wanted:
                return web.Response(
                    body=_encode(_model_info(spec)),
                    headers=self._headers({"Content-Type": "application/json"}),
                )
        raise _Invalid(404, "not_found_error", f"model: {model_id}")


# --------------------------------------------------------------------------- answer building


def _build_answer(body: Mapping[str, Any], reply: Reply) -> _Answer:
    model: str = body["model"]
    text = reply.text if reply.text is not None else f"Hello from {model}."
    content: list[dict[str, Any]] = []
    if reply.thinking is not None:
        content.append(
            {
                "type": "thinking",
                "thinking": reply.thinking,
                "signature": _fake_signature(reply.thinking),
            }
        )
    if text:
        content.append({"type": "text", "text": text})
    tool_tokens = 0
    if reply.tool_use is not None:
        name = str(reply.tool_use.get("name", "tool"))
        tool_input = reply.tool_use.get("input", {})
        # Derived from the request minus `stream`, so both modes give the same block.
        request = {k: v for k, v in body.items() if k != "stream"}
        seed = _encode(request) + b"\0" + name.encode() + b"\0" + _encode(tool_input)
        tool_id = str(reply.tool_use.get("id") or _stable_id("toolu_01", seed, 22))
        content.append(
            {
                "type": "tool_use",
                "id": tool_id,
                "name": name,
                "input": tool_input,
                "caller": {"type": "direct"},
            }
        )
        tool_tokens = len(_encode(tool_input)) // 4 + 8
    thinking_tokens = len(reply.thinking.split()) if reply.thinking else 0
    output_tokens = len(text.split()) + thinking_tokens + tool_tokens + 3

    geo = body.get("inference_geo")
    defaults: dict[str, Any] = {
        "input_tokens": estimate_input_tokens(body),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"thinking_tokens": thinking_tokens},
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
        "service_tier": "standard",
        "inference_geo": geo if isinstance(geo, str) else "global",
    }
    if body.get("speed") in ("standard", "fast"):
        defaults["speed"] = body["speed"]
    usage = _merge_usage(defaults, reply.usage or {})

    stop_reason = reply.stop_reason or ("tool_use" if reply.tool_use is not None else "end_turn")
    stop_sequence = None
    sequences = body.get("stop_sequences")
    if stop_reason == "stop_sequence" and isinstance(sequences, list) and sequences:
        stop_sequence = sequences[0]
    message = {
        "id": _random_id("msg_01"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "stop_details": None,
        "container": None,
        "usage": usage,
    }
    return _Answer(message=message, usage=usage)


def _empty_block(block: Mapping[str, Any]) -> dict[str, Any]:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": ""}
    if kind == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    if kind == "tool_use":
        return {
            "type": "tool_use",
            "id": block["id"],
            "name": block["name"],
            "caller": block["caller"],
            "input": {},
        }
    return dict(block)


def _deltas(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    kind = block["type"]
    if kind == "text":
        return [{"type": "text_delta", "text": piece} for piece in _words(block["text"])]
    if kind == "thinking":
        deltas = [
            {"type": "thinking_delta", "thinking": piece} for piece in _words(block["thinking"])
        ]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return deltas
    if kind == "tool_use":
        # The API streams the input as JSON text with ", " / ": " separators and opens with
        # an empty fragment (spec §4.4).
        serialized = json.dumps(block["input"], ensure_ascii=False)
        fragments = ["", *_chunks(serialized, _INPUT_JSON_CHUNK)]
        return [{"type": "input_json_delta", "partial_json": part} for part in fragments]
    return []


def _reset(request: web.BaseRequest) -> None:
    """Closes the client's connection with a TCP RST, dropping anything unsent."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout turns close() into a reset, so the client sees
        # ECONNRESET / an incomplete body rather than a tidy end of stream.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# --------------------------------------------------------------------------- runners


@contextlib.contextmanager
def running_fake(**kwargs: Any) -> Iterator[FakeUpstream]:
    """Runs a FakeUpstream in a background thread with its own event loop.

    For synchronous tests; ``script()``, ``received`` and ``billed`` are thread-safe.

    Args:
        **kwargs: Passed to :class:`FakeUpstream`; ``host`` and ``port`` go to ``start()``.

    Yields:
        The started fake; it is stopped and its thread joined on exit.
    """
    host = kwargs.pop("host", "127.0.0.1")
    port = kwargs.pop("port", 0)
    fake = FakeUpstream(**kwargs)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(fake.start(host, port))
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="fake-upstream", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        loop.close()
        raise failure[0]
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def _serve(
    host: str, port: int, event_delay: float, ping_every: int, api_keys: list[str] | None
) -> None:
    # Long benchmark runs would otherwise keep every request in memory.
    fake = FakeUpstream(
        api_keys=api_keys,
        default_event_delay=event_delay,
        ping_every=ping_every,
        history_limit=1000,
    )
    url = await fake.start(host, port)
    print(f"listening on {url}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    """Serves a fake upstream until killed (SIGINT or SIGTERM).

    Prints ``listening on http://HOST:PORT`` (flushed) once ready.

    Args:
        argv: Command-line arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m router.fake.upstream", description="Fake Anthropic Messages API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--event-delay", type=float, default=0.0, help="seconds between SSE events")
    parser.add_argument(
        "--ping-every",
        type=int,
        default=0,
        help="also send a ping after every N events (0: only the first)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help="accept only this key (repeatable); default: any non-empty key",
    )
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.event_delay, args.ping_every, args.api_keys))


if __name__ == "__main__":
    main()
