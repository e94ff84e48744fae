"""Reply directives: how a script steers the fake's answer from inside the conversation.

The text of the latest user turn (its tool results included) may hold ``[[reply:...]]``:

* ``tool=NAME``: answer with a call to that tool (input made up from its ``input_schema``);
* ``words=N``: the answer's text is N words long (at most ``MAX_WORDS``);
* ``redacted``: the answer's thinking, if any, is a ``redacted_thinking`` block.

Items combine with commas (``[[reply:tool=Bash,words=40]]``) or across several directives;
unknown items are ignored, as a model would ignore them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_WORDS", "Directives", "latest_user_text", "read_directives", "without_directives"]

MAX_WORDS = 10_000
_DIRECTIVE = re.compile(r"\[\[reply:([^\]]*)\]\]")


@dataclass(frozen=True)
class Directives:
    """What the latest user turn asked of the answer.

    Attributes:
        tool: Call this tool.
        words: The text's length in words.
        redacted: Return thinking as redacted_thinking.
    """

    tool: str | None = None
    words: int | None = None
    redacted: bool = False


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        return []
    out: list[str] = []
    for block in content:
        if not isinstance(block, Mapping):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            out.append(block["text"])
        elif block.get("type") == "tool_result":
            out += _texts(block.get("content"))
    return out


def latest_user_text(messages: Sequence[Any]) -> str:
    """Returns the text of the last ``user`` message: its text blocks and tool results."""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return "\n".join(_texts(message.get("content")))
    return ""


def read_directives(messages: Sequence[Any]) -> Directives:
    """Returns the directives in the latest user turn (none: all defaults)."""
    tool: str | None = None
    words: int | None = None
    redacted = False
    for found in _DIRECTIVE.finditer(latest_user_text(messages)):
        for item in found.group(1).split(","):
            key, _, value = (part.strip() for part in item.partition("="))
            if key == "tool" and value:
                tool = value
            elif key == "words" and value.isdigit():
                words = min(int(value), MAX_WORDS)
            elif key == "redacted":
                redacted = True
    return Directives(tool, words, redacted)


def without_directives(text: str) -> str:
    """Returns the text with its directives removed."""
    return _DIRECTIVE.sub("", text)
