"""Errors the proxy itself answers with, in Anthropic's error shape, and the one renderer for
them all.

The tree, and what each becomes on the wire::

    RouterError                     500 api_error
    ├── InvalidRequest              400 invalid_request_error
    ├── AuthenticationFailed        401 authentication_error
    ├── PermissionDenied            403 permission_error
    ├── NotFound                    404 not_found_error
    ├── MethodNotAllowed            405 invalid_request_error   (with ``Allow``)
    ├── RequestTimeout              408 timeout_error           (the body came too slowly)
    ├── RequestTooLarge             413 request_too_large
    ├── BudgetExceeded              429 rate_limit_error        (router.budgets: a budget spent,
    │                                                            or a rate limit reached)
    ├── Overloaded                  529 overloaded_error        (with ``retry-after``)
    ├── UpstreamUnavailable         502 api_error
    └── UpstreamTimeout             504 timeout_error

Errors that come from the upstream API are never wrapped in these: they pass through untouched.
Every error the proxy answers goes through :func:`error_response`, which adds ``request-id``,
``x-should-retry`` (the SDKs obey it before the status) and ``retry-after`` where they apply.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import ClassVar

import msgspec

# URL-safe base64 is base62 plus '-' and '_'; folding those two onto letters keeps the API's
# alphabet at the cost of a sliver of entropy (still > 140 bits), and is 20x faster than
# choosing 24 characters one by one.
_TO_BASE62 = str.maketrans("-_", "xZ")

RETRYABLE: frozenset[int] = frozenset({408, 409, 429}) | frozenset(range(500, 600))
"""Statuses the official SDKs retry when no ``x-should-retry`` says otherwise."""


def new_request_id() -> str:
    """Return a fresh id in the API's ``req_…`` style (24 base62 characters)."""
    return "req_" + secrets.token_urlsafe(18).translate(_TO_BASE62)


class RouterError(Exception):
    """Base of every error the proxy answers itself.

    Args:
        message: The ``error.message`` the client reads; never a traceback or a key.
        headers: Extra response headers (``Allow`` for a 405, say).
        retry_after: Seconds after which a retry may succeed; sent rounded up.
        should_retry: Overrides the ``x-should-retry`` the status implies: False once the proxy
            has retried itself and given up, so that the client does not multiply the load.
    """

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "api_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None,
                 retry_after: float | None = None, should_retry: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = headers or {}
        self.retry_after = retry_after
        self.should_retry = should_retry


class InvalidRequest(RouterError):
    """The request body or headers are not a valid Messages request."""

    status_code = 400
    error_type = "invalid_request_error"


class AuthenticationFailed(RouterError):
    """No API key came with the request."""

    status_code = 401
    error_type = "authentication_error"


class PermissionDenied(RouterError):
    """The key is valid but may not do this (an admin endpoint)."""

    status_code = 403
    error_type = "permission_error"


class NotFound(RouterError):
    """No such endpoint."""

    status_code = 404
    error_type = "not_found_error"


class MethodNotAllowed(RouterError):
    """The endpoint exists but not for this HTTP method; ``allow`` names the ones it takes."""

    status_code = 405
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message, headers={"allow": allow})


class RequestTimeout(RouterError):
    """The client did not send its whole request body in time."""

    status_code = 408
    error_type = "timeout_error"


class RequestTooLarge(RouterError):
    """The body is over the API's 32 MB limit."""

    status_code = 413
    error_type = "request_too_large"


class Overloaded(RouterError):
    """The proxy is at its own admission limits (requests or body bytes in flight)."""

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


def retry_after_value(seconds: float) -> str:
    """Return a ``retry-after`` value: whole seconds rounded up, so a client that obeys it never
    comes back before the time it was given (and never 0)."""
    return str(max(1, math.ceil(seconds - 1e-9)))


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A rendered error: status, headers (lower-case, as bytes) and body."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header_dict(self) -> dict[str, str]:
        """The headers as a dict of strings, for frameworks that take one."""
        return {k.decode("latin-1"): v.decode("latin-1") for k, v in self.headers}


def error_response(err: RouterError, request_id: str) -> ErrorResponse:
    """Render one of the proxy's errors: the envelope, ``request-id``, ``x-should-retry``, and
    ``retry-after`` when the error knows when to come back."""
    body = error_body(err.error_type, err.message, request_id)
    retry = err.should_retry
    if retry is None:
        retry = err.status_code in RETRYABLE
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"request-id", request_id.encode()),
        (b"x-should-retry", b"true" if retry else b"false"),
    ]
    if err.retry_after is not None and retry:
        headers.append((b"retry-after", retry_after_value(err.retry_after).encode()))
    headers.extend(
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()
    )
    return ErrorResponse(err.status_code, headers, body)
