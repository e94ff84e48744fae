"""What a test can script into the fake (one behaviour per ``POST /v1/messages``) and what the
fake records of each request.

``Reply`` answers normally; ``Fail``, ``Stall``, ``Drop``, ``StreamError`` and ``Malformed`` are
the faults the SDKs and the proxy must survive (spec §2.3, §4.6, §5).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_MESSAGES",
    "KEY_HEADER",
    "STATUS_FOR_TYPE",
    "Behaviour",
    "Drop",
    "Fail",
    "Malformed",
    "Received",
    "Reply",
    "Stall",
    "StreamError",
]

KEY_HEADER = "x-fake-key"
"""Request header naming a queue of ``FakeUpstream.script_for``: every attempt of one client
request (its retries and fallbacks through a proxy, and its SDK's retries) carries it."""

DEFAULT_MESSAGES: Mapping[int, str] = MappingProxyType(
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
STATUS_FOR_TYPE: Mapping[str, int] = MappingProxyType(
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

    Fields left at None are filled from the request: its ``[[reply:...]]`` directives (see
    ``router.fake.directives``), its ``thinking`` setting and its tools.

    Attributes:
        text: The text block. None gives a deterministic default derived from the request;
            ``""`` leaves the text block out.
        tool_use: ``{"name": ..., "input": {...}}`` (optionally ``"id"``) adds a tool_use block
            after the text and makes the default stop_reason ``tool_use``.
        thinking: The thinking block's text, signed for the model that answers, before the
            text. None thinks only when the request asks for thinking; ``""`` never thinks.
        usage: Overrides usage fields; nested objects (``cache_creation``,
            ``server_tool_use``, ``output_tokens_details``) are merged key by key and a value
            of None removes the field. Fields not given get computed defaults, the input side
            from the prompt-cache simulation.
        event_delay: Seconds to sleep between SSE events (streaming only). 0 uses the
            fake's ``default_event_delay``.
        stop_reason: Defaults to ``end_turn``, or ``tool_use`` when ``tool_use`` is set.
        headers: Extra response headers; they override the fake's own, and ``""`` removes one.
        pad_json: When streaming, pad some data JSON with spaces before the closing brace,
            the way the SDK's recorded fixtures do (``{"type":"content_block_stop","index":0  }``).
        stall_after: When streaming, send only this many events, then hold the connection open
            without another byte (a stalled stream) until the client gives up.
    """

    text: str | None = None
    tool_use: dict[str, Any] | None = None
    thinking: str | None = None
    usage: dict[str, Any] | None = None
    event_delay: float = 0.0
    stop_reason: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    pad_json: bool = False
    stall_after: int | None = None


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
            object.__setattr__(self, "message", DEFAULT_MESSAGES.get(self.status, "Error"))


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
