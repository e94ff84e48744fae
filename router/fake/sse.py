"""Rendering an answer as Server-Sent Events and writing them (spec §4), cuts included.

Every event is ``event: NAME\\ndata: JSON\\n\\n``; the first ping follows the first
content_block_start, as captures show; ``message_delta.usage`` carries cumulative totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import msgspec
from aiohttp import web

from router.fake.behaviours import StreamError
from router.fake.ledger import Ledger
from router.fake.replies import Answer

__all__ = ["SSE_HEADERS", "Event", "answer_events", "reset", "write_stream"]

SSE_HEADERS: Mapping[str, str] = MappingProxyType(
    {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
)
_PING = b'{"type": "ping"}'
_INPUT_JSON_CHUNK = 10

# Fields a message_start carries (the input side) and fields a message_delta repeats as
# cumulative totals; the SDK's accumulator overwrites exactly the latter (spec §4.5).
_START_USAGE_KEYS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation",
    "output_tokens",
    "service_tier",
    "inference_geo",
    "speed",
)
_DELTA_USAGE_KEYS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
    "output_tokens_details",
    "server_tool_use",
)


@dataclass(frozen=True)
class Event:
    """One SSE event's bytes and, for message_start/_delta, the cumulative usage as of it."""

    frame: bytes
    usage: dict[str, Any] | None = None


def _words(text: str) -> list[str]:
    """Splits text into word-sized pieces that concatenate back to the original."""
    if not text:
        return []
    pieces = re.findall(r"\s*\S+", text)
    consumed = sum(len(piece) for piece in pieces)
    if consumed < len(text):
        # Trailing whitespace has no word to lean on; keep it so the deltas add up.
        if pieces:
            pieces[-1] += text[consumed:]
        else:
            pieces = [text]
    return pieces


def _empty_block(block: Mapping[str, Any]) -> dict[str, Any]:
    kind = block["type"]
    if kind == "text":
        return {"type": "text", "text": ""}
    if kind == "thinking":
        return {"type": "thinking", "thinking": "", "signature": ""}
    if kind == "tool_use":
        return {
            "type": "tool_use",
            "id": block["id"],
            "name": block["name"],
            "caller": block["caller"],
            "input": {},
        }
    # redacted_thinking and the rest arrive whole in content_block_start.
    return dict(block)


def _deltas(block: Mapping[str, Any]) -> list[dict[str, Any]]:
    kind = block["type"]
    if kind == "text":
        return [{"type": "text_delta", "text": piece} for piece in _words(block["text"])]
    if kind == "thinking":
        deltas = [
            {"type": "thinking_delta", "thinking": piece} for piece in _words(block["thinking"])
        ]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
        return deltas
    if kind == "tool_use":
        # The API streams the input as JSON text with ", " / ": " separators and opens with
        # an empty fragment (spec §4.4).
        serialized = json.dumps(block["input"], ensure_ascii=False)
        chunks = [serialized[i : i + _INPUT_JSON_CHUNK] for i in range(0, len(serialized),
                                                                         _INPUT_JSON_CHUNK)]
        return [{"type": "input_json_delta", "partial_json": part} for part in ["", *chunks]]
    return []


def _frame(name: str, data: Any, pad: bool, padding: int = 0) -> bytes:
    encoded = msgspec.json.encode(data)
    if pad and padding:
        encoded = encoded[:-1] + b" " * padding + b"}"
    return b"event: " + name.encode() + b"\ndata: " + encoded + b"\n\n"


def _with_pings(core: list[Event], ping: Event, every: int) -> list[Event]:
    events: list[Event] = []
    since_ping = 0
    for event, following in zip(core, [*core[1:], None], strict=True):
        events.append(event)
        if event is ping:
            since_ping = 0
            continue
        since_ping += 1
        # Never after message_stop, and never twice in a row.
        if since_ping >= every and following not in (None, ping):
            events.append(ping)
            since_ping = 0
    return events


def answer_events(answer: Answer, pad: bool, ping_every: int) -> list[Event]:
    """Returns the answer as the SSE events the API would send.

    Args:
        answer: The answer to render.
        pad: Pad some JSON with spaces before the closing brace, as recorded fixtures do.
        ping_every: If > 0, also send a ping after every this many other events.
    """
    message, usage = answer.message, answer.usage
    start_usage = {k: usage[k] for k in _START_USAGE_KEYS if k in usage}
    start_usage["output_tokens"] = min(1, int(usage.get("output_tokens", 1)))
    delta_usage = {k: usage[k] for k in _DELTA_USAGE_KEYS if k in usage}
    start_message = {
        **{k: v for k, v in message.items() if k not in ("content", "usage")},
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "stop_details": None,
        "usage": start_usage,
    }
    start = {"type": "message_start", "message": start_message}
    core = [Event(_frame("message_start", start, pad, 15), usage=copy.deepcopy(start_usage))]
    ping = Event(b"event: ping\ndata: " + _PING + b"\n\n")
    for index, block in enumerate(message["content"]):
        opened = {"type": "content_block_start", "index": index,
                  "content_block": _empty_block(block)}
        core.append(Event(_frame("content_block_start", opened, pad)))
        if index == 0:
            # Captures put the first ping right after the first content_block_start.
            core.append(ping)
        for delta in _deltas(block):
            data = {"type": "content_block_delta", "index": index, "delta": delta}
            padding = 1 if delta["type"] == "signature_delta" else 0
            core.append(Event(_frame("content_block_delta", data, pad, padding)))
        stop = {"type": "content_block_stop", "index": index}
        core.append(Event(_frame("content_block_stop", stop, pad, 2)))
    if not message["content"]:
        core.insert(1, ping)
    final_usage = {**start_usage, **copy.deepcopy(delta_usage)}
    delta = {
        "type": "message_delta",
        "delta": {
            "stop_reason": message["stop_reason"],
            "stop_sequence": message["stop_sequence"],
            "stop_details": message["stop_details"],
        },
        "usage": delta_usage,
    }
    core.append(Event(_frame("message_delta", delta, pad, 4), usage=final_usage))
    core.append(Event(_frame("message_stop", {"type": "message_stop"}, pad, 6)))
    return core if ping_every <= 0 else _with_pings(core, ping, ping_every)


def reset(request: web.BaseRequest) -> None:
    """Closes the client's connection with a TCP RST, dropping anything unsent."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # SO_LINGER with a zero timeout turns close() into a reset, so the client sees
        # ECONNRESET / an incomplete body rather than a tidy end of stream.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def write_stream(
    request: web.Request,
    headers: dict[str, str],
    events: list[Event],
    *,
    delay: float,
    cut: int | None,
    error: StreamError | None,
    ledger: Ledger,
    stall: bool = False,
) -> web.StreamResponse:
    """Writes a 200 event stream, billing usage as the events carrying it go out.

    Args:
        request: The request being answered.
        headers: Response headers (the SSE ones are added unless already set).
        events: The whole answer's events.
        delay: Seconds between events.
        cut: Send only this many events, then reset the connection (or send ``error``).
        error: After ``cut`` events, send this error event and end the stream cleanly.
        ledger: Where billed usage and the bytes written are recorded.
        stall: After ``cut`` events, send nothing more until the client hangs up.
    """
    for key, value in SSE_HEADERS.items():
        if not any(k.lower() == key.lower() for k in headers):
            headers[key] = value
    response = web.StreamResponse(status=200, headers=headers)
    await response.prepare(request)
    to_send = events if cut is None else events[: max(0, cut)]
    entry: dict[str, Any] | None = None
    sent_any = False
    written = bytearray()
    try:
        for event in to_send:
            if sent_any and delay > 0:
                await asyncio.sleep(delay)
            # Bill before writing: a client that has seen the event must find it billed,
            # and the test thread may look the instant the bytes arrive.
            previous: dict[str, Any] | None = None
            if event.usage is not None:
                if entry is None:
                    entry = copy.deepcopy(event.usage)
                    ledger.bill(entry)
                else:
                    previous = copy.deepcopy(entry)
                    ledger.rebill(entry, event.usage)
            try:
                # aiohttp hands each write straight to the socket (one chunk per event)
                # and waits for the transport to drain once its buffer backs up.
                await response.write(event.frame)
                written += event.frame
            except ConnectionError:
                if entry is not None and previous is not None:
                    ledger.rebill(entry, previous)
                elif entry is not None and event.usage is not None:
                    ledger.unbill(entry)
                raise
            sent_any = True
        if stall:
            await asyncio.sleep(3600)  # cancelled when the client hangs up
        if cut is not None and error is None:
            reset(request)
            return response
        if error is not None:
            if sent_any and delay > 0:
                await asyncio.sleep(delay)
            payload = {
                "type": "error",
                "error": {"type": error.error_type, "message": error.message},
                "request_id": next((v for k, v in headers.items() if k.lower() == "request-id"),
                                   None),
            }
            frame = b"event: error\ndata: " + msgspec.json.encode(payload) + b"\n\n"
            await response.write(frame)
            written += frame
        await response.write_eof()
    except ConnectionError:
        # The client went away mid-stream; nothing more to send.
        pass
    finally:
        ledger.record_sent(bytes(written))
    return response
