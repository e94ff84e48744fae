"""The parts of the Messages API the router reads.

Only the fields routing and accounting need are typed here. Everything else in a request stays in
the raw body, which is forwarded as it came, so fields this proxy has never heard of still reach
the API untouched.
"""

from __future__ import annotations

from typing import Any

import msgspec

Block = dict[str, Any]
"""A content block, kept as plain data: new block types must not break decoding."""


class MessageParam(msgspec.Struct, frozen=True):
    """One turn of the conversation."""

    role: str
    content: str | list[Block]


class CountTokensRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The routed-on fields of a ``POST /v1/messages/count_tokens`` body (no ``max_tokens``)."""

    model: str
    messages: list[MessageParam]
    system: str | list[Block] | None = None
    tools: list[Block] | None = None
    tool_choice: Block | None = None
    thinking: Block | None = None
    output_config: Block | None = None


class MessagesRequest(CountTokensRequest, frozen=True, kw_only=True):
    """The routed-on fields of a ``POST /v1/messages`` body: count_tokens' and a few more."""

    max_tokens: int
    metadata: Block | None = None
    stream: bool = False


class CacheCreation(msgspec.Struct, frozen=True):
    """Cache writes split by time-to-live."""

    ephemeral_5m_input_tokens: int = 0
    ephemeral_1h_input_tokens: int = 0


class ServerToolUse(msgspec.Struct, frozen=True):
    """Server tools billed per call."""

    web_search_requests: int = 0
    web_fetch_requests: int = 0


class Usage(msgspec.Struct, frozen=True):
    """Token usage as the API reports it. ``None`` means the field was not reported."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: CacheCreation | None = None
    server_tool_use: ServerToolUse | None = None
    service_tier: str | None = None
    inference_geo: str | None = None

    def updated(self, newer: Usage) -> Usage:
        """Return this usage with every field ``newer`` reports overwritten.

        Stream usage is cumulative: a ``message_delta`` replaces earlier numbers, never adds.
        """
        changes = {f: v for f in self.__struct_fields__ if (v := getattr(newer, f)) is not None}
        return msgspec.structs.replace(self, **changes) if changes else self


class _HasUsage(msgspec.Struct):
    usage: Usage | None = None


class _StartEvent(msgspec.Struct):
    message: _HasUsage


class _ErrorDetail(msgspec.Struct):
    type: str = "api_error"


class _ErrorEvent(msgspec.Struct):
    error: _ErrorDetail


class _Delta(msgspec.Struct):
    type: str = ""
    signature: str = ""


class _SignedEvent(msgspec.Struct):
    delta: _Delta | None = None
    content_block: Block | None = None


class _Content(msgspec.Struct):
    content: list[Block] = []


_message_decoder = msgspec.json.Decoder(_HasUsage)
_signed_decoder = msgspec.json.Decoder(_SignedEvent)
_content_decoder = msgspec.json.Decoder(_Content)
_start_decoder = msgspec.json.Decoder(_StartEvent)
_error_decoder = msgspec.json.Decoder(_ErrorEvent)


def usage_of_message(body: bytes) -> Usage | None:
    """Return the usage of a non-streamed Message body, or None if the body has none."""
    try:
        return _message_decoder.decode(body).usage
    except msgspec.DecodeError:
        return None


def usage_of_event(name: bytes, data: bytes) -> Usage | None:
    """Return the usage an SSE event reports (``message_start`` or ``message_delta``)."""
    try:
        if name == b"message_start":
            return _start_decoder.decode(data).message.usage
        if name == b"message_delta":
            return _message_decoder.decode(data).usage
    except msgspec.DecodeError:
        return None
    return None


def error_type_of_event(data: bytes) -> str:
    """Return ``error.type`` of an SSE ``error`` event (``api_error`` when unreadable)."""
    try:
        return _error_decoder.decode(data).error.type
    except msgspec.DecodeError:
        return "api_error"


def signature_of_event(data: bytes) -> str | None:
    """Return the thinking signature a ``signature_delta``, or the data a ``redacted_thinking``
    block start, carries."""
    try:
        event = _signed_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    if event.delta is not None and event.delta.type == "signature_delta":
        return event.delta.signature or None
    block = event.content_block
    if block is not None and block.get("type") == "redacted_thinking":
        value = block.get("data")
        return value if isinstance(value, str) and value else None
    return None


def signatures_of_message(body: bytes) -> list[str]:
    """Return the thinking signatures (and redacted thinking data) of a non-streamed answer."""
    try:
        content = _content_decoder.decode(body).content
    except msgspec.DecodeError:
        return []
    found = []
    for block in content:
        kind = block.get("type")
        value = block.get("signature") if kind == "thinking" else (
            block.get("data") if kind == "redacted_thinking" else None)
        if isinstance(value, str) and value:
            found.append(value)
    return found
