"""Reading an SSE stream as it passes: usage, errors, where the model is and whether the stream
ended properly, the bytes left untouched.

Parsing follows the WHATWG rules the SDKs use where they matter here: lines end in ``\\n``,
``\\r\\n`` or ``\\r`` (even when a ``\\r\\n`` is split across two chunks), a blank line ends an
event, and the ``event:`` and ``data:`` lines may come in any order. Memory stays bounded: an
event larger than :data:`MAX_EVENT_BYTES` is skipped (none of the events read here is anywhere
near that big), never buffered whole.
"""

from __future__ import annotations

import time

import msgspec

from router.wire import Usage, error_type_of_event, signature_of_event, usage_of_event

MAX_EVENT_BYTES = 1 << 20
"""Largest event kept whole while looking for its end; larger ones (a huge content block) are
skipped: usage and errors come in small events."""


class _Typed(msgspec.Struct):
    type: str = ""


class _BlockStart(msgspec.Struct):
    content_block: _Typed = msgspec.field(default_factory=_Typed)


_block_start = msgspec.json.Decoder(_BlockStart)


class StreamUsage:
    """Reads usage, errors and progress from an SSE byte stream as it passes, without altering
    it."""

    __slots__ = ("_buffer", "_pending_cr", "_signing", "_skipping", "error_type",
                 "first_content_at", "signatures", "stopped", "usage", "writing")

    def __init__(self, *, signatures: bool = False) -> None:
        self._buffer = b""
        self._pending_cr = False
        self._skipping = False
        self._signing = signatures
        self.signatures: list[str] = []
        """Thinking signatures (and redacted thinking data) of the answer, when asked for."""
        self.usage = Usage()
        self.error_type: str | None = None
        """``error.type`` of an ``error`` event the stream carried."""
        self.first_content_at: float | None = None
        """``perf_counter()`` when the first content delta passed: time to first token."""
        self.stopped = False
        """A ``message_stop`` passed: the answer is complete."""
        self.writing = False
        """Inside a text block: the model is writing, so a long silence is a stall."""

    @property
    def ended(self) -> bool:
        """The stream ended as the protocol allows: ``message_stop`` or an ``error`` event."""
        return self.stopped or self.error_type is not None

    def feed(self, chunk: bytes) -> None:
        """Consume the next chunk of the stream."""
        if self._pending_cr:
            chunk = b"\r" + chunk
            self._pending_cr = False
        if chunk.endswith(b"\r"):
            # Perhaps the first half of a \r\n: decide when the next chunk comes.
            chunk = chunk[:-1]
            self._pending_cr = True
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self._skipping:
            chunk = self._skip(chunk)
            if self._skipping:
                return
        buffer = self._buffer + chunk if self._buffer else chunk
        start = 0
        while (end := buffer.find(b"\n\n", start)) != -1:
            self._event(buffer[start:end])
            start = end + 2
        rest = buffer[start:]
        if len(rest) > MAX_EVENT_BYTES:
            # Keep the last byte: it may be the first \n of the boundary.
            self._buffer = b""
            self._skipping = True
            self._skip(rest[-1:])
        else:
            self._buffer = rest

    def close(self) -> None:
        """The stream ended: a ``\r`` held back (in case a ``\n`` followed) ends its line."""
        if self._pending_cr:
            self._pending_cr = False
            self.feed(b"\n")

    def _skip(self, data: bytes) -> bytes:
        """Drop bytes up to the end of the oversized event; return what follows it."""
        data = self._buffer + data
        end = data.find(b"\n\n")
        if end == -1:
            self._buffer = data[-1:]
            return b""
        self._skipping = False
        self._buffer = b""
        return data[end + 2:]

    def _event(self, block: bytes) -> None:
        if self._signing and (b"signature_delta" in block or b"redacted_thinking" in block):
            signature = signature_of_event(_fields(block)[1])
            if signature:
                self.signatures.append(signature)
        # Content deltas and pings are the bulk of a stream: recognised at a glance.
        if block.startswith(b"event: content_block_delta"):
            if self.first_content_at is None:
                self.first_content_at = time.perf_counter()
            return
        if block.startswith(b"event: ping"):
            return
        name, data = _fields(block)
        if name == b"content_block_delta":
            if self.first_content_at is None:
                self.first_content_at = time.perf_counter()
        elif name == b"content_block_start":
            try:
                self.writing = _block_start.decode(data).content_block.type == "text"
            except msgspec.DecodeError:
                self.writing = False
        elif name == b"content_block_stop":
            self.writing = False
        elif name == b"message_stop":
            self.stopped = True
        elif name == b"error":
            self.error_type = error_type_of_event(data)
        else:
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
