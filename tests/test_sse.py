"""Unit tests of the SSE reader: usage, errors and progress from a byte stream cut anywhere."""

from __future__ import annotations

import json

import pytest

from router.upstream.sse import MAX_EVENT_BYTES, StreamUsage
from router.wire import Usage


def event(name: str, data: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


START = event("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "m",
    "usage": {"input_tokens": 11, "cache_read_input_tokens": 5, "output_tokens": 1}}})
TEXT_START = event("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}})
THINKING_START = event("content_block_start", {
    "type": "content_block_start", "index": 0,
    "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
DELTA = event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                      "delta": {"type": "text_delta", "text": "Hello"}})
STOP_BLOCK = event("content_block_stop", {"type": "content_block_stop", "index": 0})
MESSAGE_DELTA = event("message_delta", {"type": "message_delta",
                                        "delta": {"stop_reason": "end_turn"},
                                        "usage": {"output_tokens": 6}})
MESSAGE_STOP = event("message_stop", {"type": "message_stop"})
STREAM = START + TEXT_START + PING + DELTA + DELTA + STOP_BLOCK + MESSAGE_DELTA + MESSAGE_STOP
EXPECTED = Usage(input_tokens=11, output_tokens=6, cache_read_input_tokens=5)


def read(*chunks: bytes) -> StreamUsage:
    tracker = StreamUsage()
    for chunk in chunks:
        tracker.feed(chunk)
    tracker.close()
    return tracker


def test_usage_is_cumulative_and_the_end_is_seen() -> None:
    tracker = read(STREAM)
    assert tracker.usage == EXPECTED
    assert tracker.stopped and tracker.ended
    assert tracker.error_type is None
    assert tracker.first_content_at is not None


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_any_line_ending_split_at_any_byte(newline: bytes) -> None:
    stream = STREAM.replace(b"\n", newline)
    for cut in range(1, len(stream)):
        tracker = read(stream[:cut], stream[cut:])
        assert tracker.usage == EXPECTED, cut
        assert tracker.stopped, cut


def test_a_crlf_split_across_chunks_does_not_make_a_blank_line() -> None:
    stream = START.replace(b"\n", b"\r\n")
    cut = stream.index(b"\r\n") + 1  # "event: message_start\r" | "\ndata: ..."
    tracker = read(stream[:cut], stream[cut:], MESSAGE_STOP)
    assert tracker.usage.input_tokens == 11
    assert tracker.stopped


def test_byte_by_byte() -> None:
    tracker = read(*(STREAM[i:i + 1] for i in range(len(STREAM))))
    assert tracker.usage == EXPECTED and tracker.stopped


def test_fields_in_any_order_with_comments_and_no_space() -> None:
    start = (b": a comment\ndata:" + START.split(b"data: ", 1)[1].rstrip(b"\n")
             + b"\nevent:message_start\n\n")
    tracker = read(start, b"id: 7\nevent:message_stop\ndata: {}\n\n")
    assert tracker.usage.input_tokens == 11
    assert tracker.stopped


def test_a_stream_cut_short_has_not_ended() -> None:
    tracker = read(START + TEXT_START + DELTA)
    assert not tracker.ended
    assert tracker.usage.input_tokens == 11


def test_an_error_event_ends_the_stream_with_its_type() -> None:
    error = event("error", {"type": "error", "error": {"type": "overloaded_error",
                                                        "message": "Overloaded"}})
    tracker = read(START, error)
    assert tracker.error_type == "overloaded_error"
    assert tracker.ended and not tracker.stopped


def test_writing_is_true_only_inside_a_text_block() -> None:
    tracker = read(START)
    assert not tracker.writing
    tracker.feed(TEXT_START)
    assert tracker.writing
    tracker.feed(DELTA + PING)
    assert tracker.writing
    tracker.feed(STOP_BLOCK)
    assert not tracker.writing
    tracker.feed(THINKING_START)
    assert not tracker.writing


def test_bad_json_is_survived() -> None:
    tracker = read(b"event: message_start\ndata: {not json\n\n",
                   b"event: content_block_start\ndata: [1,\n\n",
                   b"event: message_delta\ndata: \xff\xfe\n\n", MESSAGE_STOP)
    assert tracker.usage == Usage()
    assert not tracker.writing
    assert tracker.stopped


def test_an_oversized_event_is_skipped_and_memory_stays_bounded() -> None:
    huge = b"event: content_block_start\ndata: " + b"x" * (3 * MAX_EVENT_BYTES) + b"\n\n"
    tracker = StreamUsage()
    tracker.feed(START)
    for i in range(0, len(huge), 65536):
        tracker.feed(huge[i:i + 65536])
        assert len(tracker._buffer) <= MAX_EVENT_BYTES + 65536
    tracker.feed(MESSAGE_DELTA + MESSAGE_STOP)
    assert tracker.usage == EXPECTED
    assert tracker.stopped


def test_an_oversized_event_whose_boundary_is_split() -> None:
    huge = b"event: ping\ndata: " + b"y" * (MAX_EVENT_BYTES + 10) + b"\n"
    tracker = read(START, huge, b"\n" + MESSAGE_STOP)
    assert tracker.stopped
