"""router/body.py on its own: reading a body within its limit, and splicing in the model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from router.body import ClientGone, read_body, with_model
from router.errors import InvalidRequest, RequestTooLarge


def receiver(*messages: dict[str, Any]) -> tuple[Callable[[], Awaitable[dict[str, Any]]],
                                                 list[int]]:
    """An ASGI ``receive`` that hands out ``messages`` in order, and how many it handed out."""
    queue = list(messages)
    taken = [0]

    async def receive() -> dict[str, Any]:
        taken[0] += 1
        return queue.pop(0)

    return receive, taken


def chunk(data: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


def read(receive: Callable[[], Awaitable[dict[str, Any]]], length: str | None,
         limit: int = 100) -> bytes:
    return asyncio.run(read_body(receive, length, limit))


def test_chunks_are_joined_in_order() -> None:
    receive, _ = receiver(chunk(b'{"a":', True), chunk(b"", True), chunk(b" 1}", False))
    assert read(receive, None) == b'{"a": 1}'


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    receive, taken = receiver(chunk(b"x" * 10, False))
    with pytest.raises(RequestTooLarge, match="request body is 101 bytes, over the limit of 100"):
        read(receive, "101")
    assert taken == [0]


def test_an_undeclared_body_is_cut_off_as_soon_as_it_passes_the_limit() -> None:
    receive, taken = receiver(chunk(b"x" * 60, True), chunk(b"x" * 60, True),
                              chunk(b"x" * 60, False))
    with pytest.raises(RequestTooLarge, match="120 bytes"):
        read(receive, None)
    assert taken == [2]


def test_a_body_exactly_at_the_limit_is_accepted() -> None:
    receive, _ = receiver(chunk(b"x" * 100, False))
    assert len(read(receive, "100")) == 100


@pytest.mark.parametrize("length", ["ten", "-5", "1e3", ""])
def test_a_content_length_that_is_not_a_number_is_a_bad_request(length: str) -> None:
    receive, _ = receiver(chunk(b"{}", False))
    with pytest.raises(InvalidRequest, match="content-length"):
        read(receive, length)


def test_a_client_that_hangs_up_mid_body_is_gone() -> None:
    receive, _ = receiver(chunk(b'{"model"', True), {"type": "http.disconnect"})
    with pytest.raises(ClientGone):
        read(receive, None)


BODY = (b'{ "max_tokens" : 16,\n  "model":"claude-opus-4-7",  "messages": [], '
        b'"unknown_field": {"kept": true} }')


def test_the_model_is_spliced_and_every_other_byte_kept() -> None:
    out = with_model(BODY, "claude-opus-4-7", "claude-haiku-4-5")
    assert out == BODY.replace(b"claude-opus-4-7", b"claude-haiku-4-5")


def test_the_same_model_returns_the_body_itself() -> None:
    assert with_model(BODY, "claude-opus-4-7", "claude-opus-4-7") is BODY


def test_a_model_needing_escapes_is_encoded_as_json() -> None:
    out = with_model(BODY, "claude-opus-4-7", 'odd"model\u00e9')
    assert json.loads(out)["model"] == 'odd"model\u00e9'


def test_an_escaped_requested_value_is_found() -> None:
    body = b'{"model": "claude-opus-4-\\u0037", "max_tokens": 1, "messages": []}'
    assert json.loads(with_model(body, "claude-opus-4-7", "claude-haiku-4-5"))["model"] == (
        "claude-haiku-4-5")


def test_a_nested_model_with_the_same_value_is_left_alone() -> None:
    body = json.dumps({"model": "claude-opus-4-7", "max_tokens": 8, "messages": [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "pick",
                                           "input": {"model": "claude-opus-4-7"}}]}]}).encode()
    data = json.loads(with_model(body, "claude-opus-4-7", "claude-haiku-4-5"))
    assert data["model"] == "claude-haiku-4-5"
    assert data["messages"][0]["content"][0]["input"]["model"] == "claude-opus-4-7"
    assert list(data) == ["model", "max_tokens", "messages"]


def test_an_escaped_top_level_key_is_not_confused_with_a_nested_one() -> None:
    # The only literal `"model"` is nested; the top-level key is spelled with an escape.
    body = (b'{"mod\\u0065l": "claude-opus-4-7", "max_tokens": 8, "metadata": '
            b'{"model": "claude-opus-4-7"}, "messages": []}')
    data = json.loads(with_model(body, "claude-opus-4-7", "claude-haiku-4-5"))
    assert data["model"] == "claude-haiku-4-5"
    assert data["metadata"]["model"] == "claude-opus-4-7"
