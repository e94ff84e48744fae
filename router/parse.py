"""Stage 1 of the pipeline: request bytes and headers -> :class:`Parsed`.

The body is decoded once, into only the fields the router reads; the raw bytes are kept for
forwarding. Errors name the field in the API's own style (``max_tokens: Field required``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import msgspec

from router.errors import AuthenticationFailed, InvalidRequest
from router.wire import CountTokensRequest, MessagesRequest

RawHeaders = Iterable[tuple[bytes, bytes]]
"""Headers as ASGI gives them: lower-cased names, bytes."""

_messages_decoder = msgspec.json.Decoder(MessagesRequest)
_count_decoder = msgspec.json.Decoder(CountTokensRequest)
_MISSING = re.compile(r"Object missing required field `([^`]+)`")
_TYPE = re.compile(r"Expected `([^`]+)`, got `([^`]+)`")
_MODEL_ID = re.compile(r"[\x21-\x7e]{1,256}")

R = TypeVar("R", MessagesRequest, CountTokensRequest)


@dataclass(frozen=True, slots=True)
class Parsed:
    """A decoded request: the typed fields, the untouched body and the headers."""

    request: MessagesRequest | CountTokensRequest
    body: bytes
    headers: dict[str, str]
    """Lower-cased header names; the last value wins for repeated names."""

    @property
    def max_tokens(self) -> int | None:
        """``max_tokens`` asked, or None for count_tokens."""
        return self.request.max_tokens if isinstance(self.request, MessagesRequest) else None

    @property
    def stream(self) -> bool:
        """Whether the client asked for SSE."""
        return isinstance(self.request, MessagesRequest) and self.request.stream


def header_map(raw: RawHeaders) -> dict[str, str]:
    """Return headers as a dict of lower-cased names to latin-1 decoded values."""
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw}


def require_api_key(headers: dict[str, str]) -> None:
    """Raise :class:`AuthenticationFailed` unless an API key came with the request.

    Keys come as ``x-api-key`` or ``Authorization: Bearer``; neither value is ever echoed.
    """
    if headers.get("x-api-key", "").strip():
        return
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return
    raise AuthenticationFailed(
        "x-api-key header or Authorization: Bearer token is required"
    )


def api_key_of(headers: Mapping[str, str]) -> str:
    """Return the credential a request carries: ``x-api-key`` wins over a bearer token, as at
    the API (empty when there is none)."""
    key = headers.get("x-api-key")
    if key:
        return key
    auth = headers.get("authorization", "")
    return auth[7:] if auth[:7].lower() == "bearer " else auth


def parse_messages(body: bytes, headers: dict[str, str]) -> Parsed:
    """Decode a ``POST /v1/messages`` body.

    Raises:
        InvalidRequest: malformed JSON, a missing required field or a field of the wrong type.
    """
    return Parsed(_decode(body, _messages_decoder), body, headers)


def parse_count_tokens(body: bytes, headers: dict[str, str]) -> Parsed:
    """Decode a ``POST /v1/messages/count_tokens`` body. Raises like :func:`parse_messages`."""
    return Parsed(_decode(body, _count_decoder), body, headers)


def _decode(body: bytes, decoder: msgspec.json.Decoder[R]) -> R:
    if not body.strip():
        raise InvalidRequest("request body is empty; a JSON object is required")
    try:
        request = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(api_style_message(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise InvalidRequest("request body is not valid UTF-8") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    if not _MODEL_ID.fullmatch(request.model):
        # It becomes a header (x-router-model) and a metrics label: printable ASCII only.
        raise InvalidRequest("model: not a valid model id (printable ASCII, at most 256 "
                             "characters)")
    return request


def api_style_message(detail: str) -> str:
    """Turn a msgspec validation message into the API's ``field: problem`` style."""
    text, _, where = detail.partition(" - at `")
    path = where.rstrip("`").removeprefix("$").removeprefix(".")
    path = re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".")
    if m := _MISSING.match(text):
        field = f"{path}.{m.group(1)}" if path else m.group(1)
        return f"{field}: Field required"
    if m := _TYPE.match(text):
        expected, got = m.groups()
        if not path:
            return f"request body must be a JSON {expected}, got {got}"
        return f"{path}: expected {expected}, got {got}"
    return f"{path}: {text}" if path else text
