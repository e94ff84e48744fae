"""Thinking signatures bound to the model that wrote them (spec §6.3).

A ``thinking`` block's ``signature`` and a ``redacted_thinking`` block's ``data`` are

    base64( kind (1 byte) || nonce (16 bytes) || HMAC-SHA256(secret, kind || model || 0x00 ||
            nonce || 0x00 || thinking text) )

with ``kind`` 1 for thinking and 2 for redacted thinking, ``model`` the catalogue id (a dated
alias signs as its alias), and ``secret`` 32 random bytes drawn per ``Signer``, so per fake
process unless a test passes its own. Only the fake can tell which model signed a block: to
anyone else the value is opaque bytes. Editing the thinking text, or replaying the block to
another model, fails verification, as it does upstream.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

__all__ = ["Signer"]

_THINKING = b"\x01"
_REDACTED = b"\x02"
_NONCE = 16
_MAC = 32


class Signer:
    """Signs and checks thinking blocks with one secret."""

    def __init__(self, secret: bytes | None = None) -> None:
        """Creates a signer.

        Args:
            secret: The HMAC key; None draws 32 random bytes.
        """
        self._secret = secret if secret is not None else secrets.token_bytes(32)

    def _mac(self, kind: bytes, model: str, nonce: bytes, text: str) -> bytes:
        message = kind + model.encode() + b"\0" + nonce + b"\0" + text.encode()
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def _seal(self, kind: bytes, model: str, seed: bytes, text: str) -> str:
        # The nonce comes from the request, so a streamed and a plain answer to the same
        # request carry the same signature.
        nonce = hashlib.sha256(b"nonce\0" + seed).digest()[:_NONCE]
        return base64.b64encode(kind + nonce + self._mac(kind, model, nonce, text)).decode()

    def thinking_signature(self, model: str, thinking: str, seed: bytes) -> str:
        """Returns the ``signature`` of a thinking block ``model`` wrote.

        Args:
            model: The catalogue id of the model answering.
            thinking: The block's thinking text.
            seed: Bytes derived from the request; equal seeds give equal signatures.
        """
        return self._seal(_THINKING, model, seed, thinking)

    def redacted_data(self, model: str, seed: bytes) -> str:
        """Returns the ``data`` of a redacted_thinking block ``model`` wrote."""
        return self._seal(_REDACTED, model, seed, "")

    def signed_by(self, block: Mapping[str, Any], model: str) -> bool:
        """Whether a thinking or redacted_thinking block was written by ``model``.

        Args:
            block: The content block as the client sent it back.
            model: The catalogue id of the model now serving.
        """
        if block.get("type") == "thinking":
            kind, value, text = _THINKING, block.get("signature"), block.get("thinking")
        else:
            kind, value, text = _REDACTED, block.get("data"), ""
        if not isinstance(value, str) or not isinstance(text, str):
            return False
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return False
        if len(raw) != 1 + _NONCE + _MAC or raw[:1] != kind:
            return False
        nonce, mac = raw[1 : 1 + _NONCE], raw[1 + _NONCE :]
        return hmac.compare_digest(mac, self._mac(kind, model, nonce, text))
