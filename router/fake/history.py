"""The rules a conversation's history must follow to be served by a model (spec §6.3).

* Every thinking or redacted_thinking block in the history must be signed by the model now
  serving; another model's (or an edited) block is a 400.
* With ``thinking: {"type": "enabled"}``, the assistant turn that made the lastmost tool call
  must start with its thinking block when the tool's results follow it. With ``adaptive``
  thinking the model may have skipped thinking, so a turn without it is valid.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from router.fake.errors import invalid_request
from router.fake.signatures import Signer

__all__ = ["THINKING_BLOCKS", "check_history"]

THINKING_BLOCKS = ("thinking", "redacted_thinking")

_LOOP_RULE = (
    "When `thinking` is enabled, a final `assistant` message must start with a thinking block "
    "(preceeding the lastmost set of `tool_use` and `tool_result` blocks). We recommend you "
    "include thinking blocks from previous turns. To avoid this requirement, disable `thinking`."
)


def _blocks(message: Any) -> list[Any]:
    if not isinstance(message, Mapping):
        return []
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def _kind(block: Any) -> Any:
    return block.get("type") if isinstance(block, Mapping) else None


def _check_signatures(messages: Sequence[Any], model: str, signer: Signer) -> None:
    for m_index, message in enumerate(messages):
        for b_index, block in enumerate(_blocks(message)):
            if _kind(block) in THINKING_BLOCKS and not signer.signed_by(block, model):
                raise invalid_request(
                    f"messages.{m_index}.content.{b_index}: "
                    "Invalid `signature` in `thinking` block"
                )


def _check_tool_loop(messages: Sequence[Any]) -> None:
    assistant_turns = [
        i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role") == "assistant"
    ]
    if not assistant_turns:
        return
    last = assistant_turns[-1]
    blocks = _blocks(messages[last])
    if not any(_kind(block) == "tool_use" for block in blocks):
        return
    answered = any(
        _kind(block) == "tool_result" for later in messages[last + 1 :] for block in _blocks(later)
    )
    if not answered:
        return
    first = _kind(blocks[0]) if blocks else None
    if first not in THINKING_BLOCKS:
        raise invalid_request(
            f"messages.{last}.content.0.type: Expected `thinking` or `redacted_thinking`, "
            f"but found `{first}`. {_LOOP_RULE}"
        )


def check_history(
    messages: Sequence[Any], model: str, thinking: Mapping[str, Any] | None, signer: Signer
) -> None:
    """Refuses a history the serving model would refuse.

    Args:
        messages: The request's messages.
        model: The catalogue id of the model serving the request.
        thinking: The request's ``thinking`` object, if any.
        signer: The fake's signer, which knows who signed each block.

    Raises:
        Invalid: A foreign or edited thinking block, or (thinking enabled) a tool loop whose
            last assistant turn does not start with thinking.
    """
    _check_signatures(messages, model, signer)
    if thinking is not None and thinking.get("type") == "enabled":
        _check_tool_loop(messages)
