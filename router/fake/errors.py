"""The one exception the fake's checks raise: a request the API would refuse."""

from __future__ import annotations

__all__ = ["Invalid", "invalid_request"]


class Invalid(Exception):
    """A request the API would refuse; carries the error response to send.

    Attributes:
        status: The HTTP status, e.g. 400.
        error_type: The ``error.type``, e.g. ``invalid_request_error``.
        message: The ``error.message``.
    """

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def invalid_request(message: str) -> Invalid:
    """Returns the 400 ``invalid_request_error`` the API sends with this message."""
    return Invalid(400, "invalid_request_error", message)
