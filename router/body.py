"""Reading a request body within a size limit, and changing its ``model`` without re-encoding it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from router.errors import InvalidRequest, RequestTimeout, RequestTooLarge

Receive = Callable[[], Awaitable[dict[str, Any]]]

# A "model" key with a plain string value; escapes inside the value are allowed.
_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')


class ClientGone(Exception):
    """The client hung up before its request body was complete."""


async def read_body(receive: Receive, content_length: str | None, limit: int, *,
                    hold: Callable[[int], None] | None = None,
                    timeout: float | None = None) -> bytes:
    """Return the whole request body.

    Args:
        hold: Called with each chunk's size as it arrives, before it is kept (the admission
            gate's reservation, which may refuse it), so bodies without a length count too.
        timeout: Seconds the client has to send the whole body.

    Raises:
        RequestTooLarge: the body (declared or actual) is over ``limit`` bytes.
        RequestTimeout: the body did not arrive within ``timeout`` seconds.
        ClientGone: the client disconnected first.
    """
    if content_length is not None:
        if not content_length.strip().isdigit():
            raise InvalidRequest("content-length header is not a number")
        if int(content_length) > limit:
            raise RequestTooLarge(_too_large_message(int(content_length), limit))
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk: bytes = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if size > limit:
                        raise RequestTooLarge(_too_large_message(size, limit))
                    if hold is not None:
                        hold(len(chunk))
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None


def _too_large_message(size: int, limit: int) -> str:
    return f"request body is {size} bytes, over the limit of {limit} bytes"


def with_model(body: bytes, requested: str, model: str) -> bytes:
    """Return ``body`` with its top-level ``model`` set to ``model``, every other byte unchanged.

    When the request names its model in exactly one place, that value is spliced in place. In the
    rare body where ``"model": "<same value>"`` also appears nested (say in a tool input), the body
    is decoded and re-encoded instead: still the same JSON, key order kept.
    """
    if model == requested:
        return body
    hits = [m for m in _MODEL_FIELD.finditer(body) if _json_string(m.group(1)) == requested]
    if len(hits) == 1:
        start, end = hits[0].span(1)
        spliced = body[:start] + msgspec.json.encode(model)[1:-1] + body[end:]
        # One literal hit is the top-level key, unless that key is spelled with escapes
        # ("mod\u0065l") and the hit is a nested one: only then is a check worth its cost.
        if b"\\u" not in body or _top_level_model(spliced) == model:
            return spliced
    data = msgspec.json.decode(body)
    data["model"] = model
    return msgspec.json.encode(data)


class _ModelOnly(msgspec.Struct):
    model: str


_model_only = msgspec.json.Decoder(_ModelOnly)


def _top_level_model(body: bytes) -> str | None:
    try:
        return _model_only.decode(body).model
    except msgspec.DecodeError:
        return None


def _json_string(raw: bytes) -> str | None:
    try:
        value = msgspec.json.decode(b'"' + raw + b'"')
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, str) else None
