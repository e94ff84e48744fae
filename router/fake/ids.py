"""Ids in the API's shapes (``req_…``, ``msg_01…``, ``toolu_01…``), random or derived."""

from __future__ import annotations

import hashlib
import secrets

__all__ = ["random_id", "stable_id"]

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def random_id(prefix: str, length: int = 24) -> str:
    """Returns ``prefix`` and ``length`` random base-62 characters."""
    return prefix + "".join(secrets.choice(_BASE62) for _ in range(length))


def stable_id(prefix: str, seed: bytes, length: int = 24) -> str:
    """Returns ``prefix`` and ``length`` base-62 characters derived from ``seed``."""
    number = int.from_bytes(hashlib.sha256(seed).digest(), "big")
    chars = []
    for _ in range(length):
        number, rest = divmod(number, 62)
        chars.append(_BASE62[rest])
    return prefix + "".join(chars)
