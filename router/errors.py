"""Errors the proxy itself answers with, in Anthropic's error shape.

The tree, and what each becomes on the wire::

    RouterError                     500 api_error
    ├── InvalidRequest              400 invalid_request_error
    ├── AuthenticationFailed        401 authentication_error
    ├── MethodNotAllowed            405 invalid_request_error
    ├── RequestTooLarge             413 request_too_large
    ├── Overloaded                  529 overloaded_error
    ├── UpstreamUnavailable         502 api_error
    └── UpstreamTimeout             504 timeout_error

Errors that come from the upstream API are never wrapped in these: they pass through untouched.
The 5xx ones are statuses the official SDKs retry, which is what a client wants when the proxy
cannot reach the API.
"""

from __future__ import annotations

import secrets
from typing import ClassVar

import msgspec

# URL-safe base64 is base62 plus '-' and '_'; folding those two onto letters keeps the API's
# alphabet at the cost of a sliver of entropy (still > 140 bits), and is 20x faster than
# choosing 24 characters one by one.
_TO_BASE62 = str.maketrans("-_", "xZ")


def new_request_id() -> str:
    """Return a fresh id in the API's ``req_…`` style (24 base62 characters)."""
    return "req_" + secrets.token_urlsafe(18).translate(_TO_BASE62)


class RouterError(Exception):
    """Base of every error the proxy answers itself."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = headers or {}


class InvalidRequest(RouterError):
    """The request body or headers are not a valid Messages request."""

    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(RouterError):
    """No API key came with the request."""

    status_code = 401
    error_type = "authentication_error"


class MethodNotAllowed(RouterError):
    """The endpoint exists but not for this HTTP method."""

    status_code = 405
    error_type = "invalid_request_error"


class RequestTooLarge(RouterError):
    """The body is over the API's 32 MB limit."""

    status_code = 413
    error_type = "request_too_large"


class Overloaded(RouterError):
    """The proxy is at its in-flight limit."""

    status_code = 529
    error_type = "overloaded_error"


class UpstreamUnavailable(RouterError):
    """The upstream could not be reached or broke the connection."""

    status_code = 502
    error_type = "api_error"


class UpstreamTimeout(RouterError):
    """The upstream did not answer in time."""

    status_code = 504
    error_type = "timeout_error"


class _ErrorObject(msgspec.Struct):
    type: str
    message: str


class _ErrorEnvelope(msgspec.Struct, tag_field="type", tag="error"):
    error: _ErrorObject
    request_id: str


def error_body(error_type: str, message: str, request_id: str) -> bytes:
    """Return Anthropic's error envelope as compact JSON bytes."""
    return msgspec.json.encode(_ErrorEnvelope(_ErrorObject(error_type, message), request_id))


def error_event(error_type: str, message: str, request_id: str) -> bytes:
    """Return an SSE ``error`` event, for failures after a stream's first byte went out."""
    return b"event: error\ndata: " + error_body(error_type, message, request_id) + b"\n\n"
