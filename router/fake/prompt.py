"""A request's prompt as the cache sees it: content blocks in cache order, their tokens, the
hash of every prefix, and the breakpoints ``cache_control`` sets (spec §6.3).

Cache order is tools, then system, then messages. A string system or message content counts
as one text block. ``cache_control`` is left out of a block's hash and size, so a client's
*rolling* breakpoint (moved to the newest block each turn) still matches the prefix the
previous turn cached. Tokens are the fake's deterministic estimate: a block's compact JSON
length divided by 4, rounded up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from router.fake.errors import invalid_request

__all__ = ["MAX_BREAKPOINTS", "Breakpoint", "Prompt", "estimate_input_tokens", "read_prompt"]

# The API refuses more than four cache_control markers in one request.
MAX_BREAKPOINTS = 4
_TTLS = ("5m", "1h")


@dataclass(frozen=True)
class Breakpoint:
    """A ``cache_control`` marker: the block it sits on (index in cache order) and its TTL."""

    index: int
    ttl: str


@dataclass(frozen=True)
class Prompt:
    """A request's input in cache order.

    Attributes:
        cumulative: ``cumulative[i]`` is the tokens of blocks ``0..i``.
        prefixes: ``prefixes[i]`` identifies blocks ``0..i`` (their content and position).
        breakpoints: The cache_control markers, in cache order.
    """

    cumulative: tuple[int, ...]
    prefixes: tuple[bytes, ...]
    breakpoints: tuple[Breakpoint, ...]

    @property
    def total(self) -> int:
        """All input tokens, at least 1."""
        return max(1, self.cumulative[-1]) if self.cumulative else 1

    def tokens_through(self, index: int) -> int:
        """Tokens of blocks ``0..index``; 0 for index -1."""
        return self.cumulative[index] if index >= 0 else 0


def _as_blocks(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return content
    return [] if content is None else [content]


def _sections(body: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """(where, tag, block) for every block in cache order; ``where`` names it in errors."""
    out: list[tuple[str, str, Any]] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        out += [(f"tools.{i}", "tools", tool) for i, tool in enumerate(tools)]
    system = body.get("system")
    if isinstance(system, list):
        out += [(f"system.{i}", "system", block) for i, block in enumerate(system)]
    elif system is not None:
        out.append(("system", "system", {"type": "text", "text": system}))
    messages = body.get("messages")
    for m_index, message in enumerate(messages if isinstance(messages, list) else []):
        if not isinstance(message, Mapping):
            out.append((f"messages.{m_index}", f"{m_index}", message))
            continue
        tag = f"{m_index}:{message.get('role')}"
        blocks = _as_blocks(message.get("content"))
        out += [(f"messages.{m_index}.content.{b}", tag, blk) for b, blk in enumerate(blocks)]
    return out


def _ttl(where: str, marker: Any) -> str:
    if not isinstance(marker, Mapping) or marker.get("type") != "ephemeral":
        raise invalid_request(f"{where}.cache_control.type: Input should be 'ephemeral'")
    ttl = marker.get("ttl", "5m")
    if ttl not in _TTLS:
        raise invalid_request(f"{where}.cache_control.ttl: Input should be '5m' or '1h'")
    return str(ttl)


def read_prompt(body: Mapping[str, Any], *, strict: bool = True) -> Prompt:
    """Returns the request's prompt in cache order.

    Args:
        body: A decoded Messages or count_tokens body.
        strict: Refuse malformed cache_control markers; False skips them.

    Raises:
        Invalid: (strict only) A malformed ``cache_control``, or more than four of them.
    """
    cumulative: list[int] = []
    prefixes: list[bytes] = []
    breakpoints: list[Breakpoint] = []
    running = hashlib.sha256()
    total = 0
    for index, (where, tag, block) in enumerate(_sections(body)):
        plain = block
        if isinstance(block, Mapping) and "cache_control" in block:
            plain = {k: v for k, v in block.items() if k != "cache_control"}
            if block["cache_control"] is not None and strict:
                breakpoints.append(Breakpoint(index, _ttl(where, block["cache_control"])))
        encoded = msgspec.json.encode(plain, order="sorted")
        total += (len(encoded) + 3) // 4
        running.update(tag.encode() + b"\0" + encoded + b"\0")
        cumulative.append(total)
        prefixes.append(running.copy().digest())
    automatic = body.get("cache_control")
    if automatic is not None and cumulative and strict:
        # Top-level cache_control: one breakpoint on the last cacheable block.
        last = len(cumulative) - 1
        if all(point.index != last for point in breakpoints):
            breakpoints.append(Breakpoint(last, _ttl("cache_control", automatic)))
    if strict and len(breakpoints) > MAX_BREAKPOINTS:
        raise invalid_request(
            f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {len(breakpoints)}."
        )
    return Prompt(tuple(cumulative), tuple(prefixes), tuple(breakpoints))


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """Returns the fake's deterministic input-token count for a request body.

    The same number is ``count_tokens``' answer and the sum of ``input_tokens``,
    ``cache_read_input_tokens`` and ``cache_creation_input_tokens`` of a Messages answer.

    Args:
        body: The decoded request body (Messages or count_tokens).

    Returns:
        The sum over blocks in cache order of ``ceil(len(compact JSON) / 4)``, at least 1.
    """
    return read_prompt(body, strict=False).total
