"""Reading an SSE stream as it passes: usage, errors and the first content, bytes untouched."""

from __future__ import annotations

import time

from router.wire import Usage, error_type_of_event, signature_of_event, usage_of_event


class StreamUsage:
    """Reads usage and errors from an SSE byte stream as it passes, without altering it."""

    __slots__ = ("_buffer", "_signing", "error_type", "first_content_at", "signatures", "usage")

    def __init__(self, *, signatures: bool = False) -> None:
        self._buffer = b""
        self._signing = signatures
        self.signatures: list[str] = []
        """Thinking signatures (and redacted thinking data) of the answer, when asked for."""
        self.usage = Usage()
        self.error_type: str | None = None
        self.first_content_at: float | None = None
        """``perf_counter()`` when the first content delta passed: time to first token."""

    def feed(self, chunk: bytes) -> None:
        """Consume the next chunk of the stream."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        start = 0
        while (end := buffer.find(b"\n\n", start)) != -1:
            self._event(buffer[start:end])
            start = end + 2
        self._buffer = buffer[start:]

    def _event(self, block: bytes) -> None:
        if not block.startswith(b"event:"):
            return
        if self.first_content_at is None and block.startswith(b"event: content_block_delta"):
            self.first_content_at = time.perf_counter()
        if self._signing and (b"signature_delta" in block or b"redacted_thinking" in block):
            signature = signature_of_event(_data_of(block))
            if signature:
                self.signatures.append(signature)
            return
        # Only three events matter here; the many content deltas are skipped at a glance.
        if not block.startswith((b"event: message_", b"event:message_", b"event: error",
                                 b"event:error")):
            return
        name, data = _fields(block)
        if name == b"error":
            self.error_type = error_type_of_event(data)
            return
        found = usage_of_event(name, data)
        if found is not None:
            self.usage = self.usage.updated(found)


def _fields(block: bytes) -> tuple[bytes, bytes]:
    """Return an event's name and data."""
    name = b""
    data = b""
    for line in block.split(b"\n"):
        key, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if key == b"event":
            name = value
        elif key == b"data":
            data = data + b"\n" + value if data else value
    return name, data


def _data_of(block: bytes) -> bytes:
    return _fields(block)[1]
