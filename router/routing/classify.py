"""Stage 2 of the pipeline: :class:`Parsed` + token estimate -> :class:`Features`.

Features are what routing rules in ``router.yaml`` test, by field name (see
:mod:`router.routing.features`). Complexity is judged from the *task*, not the harness: the
latest user turn that has real text (:mod:`router.routing.task` reads it), plus what the request
asks the model to spend (thinking, effort, output budget) and, in agent loops, what the loop has
done since the task was given: how many calls, on how many files, how many failed or were
retried. System prompts and tool lists are context: they never raise complexity. A fitted model
(:mod:`router.routing.scorer`) weighs the features into ``complexity_score``.

System-role messages (Claude Code ends its main request with one, and some clients put system
blocks mid-conversation) are context too: never a prefill, never the task.

Everything here is pure: no I/O, no clock, no state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from router.config import ComplexityConfig
from router.parse import Parsed
from router.routing.features import Features
from router.routing.lexicon import TOOL_FAILURE, view
from router.routing.scorer import Scorer, default_scorer
from router.routing.task import TaskMemo, full_length, read_task, system_is_spec, user_text
from router.routing.tokens import TokenEstimate
from router.wire import Block, MessageParam, MessagesRequest

_SCAN_BACK: Final = 400
"""Most messages walked back to find the task turn of an agent loop."""
_RESULT_SAMPLE: Final = 1200
"""Characters read from each tool result that is read for failure words."""
_RESULTS_READ: Final = 8
"""Latest tool results read for failure words (older ones count only when flagged)."""
_CALLS_COMPARED: Final = 32
"""Latest tool calls compared for retries and the files they touch."""
_TARGET_KEYS: Final = frozenset(
    ("path", "file_path", "filepath", "file", "filename", "notebook_path", "url", "uri",
     "directory", "dir", "target")
)
"""Tool-input keys that name what a call touches (a file, a page, a resource)."""
_TRUTHY: Final = frozenset(("1", "true", "yes", "on"))
_REPLY_MAX: Final = 120
"""Most characters of a user turn read as a reply to the assistant's question ("yes go ahead",
"the normal plan, not family"), whose weight is then the question's."""
_PROPOSAL_READ: Final = 1000
"""Characters read from the end of the assistant's turn a reply answers: the proposal closes
it, and the cost stays that of reading a short task."""


@dataclass(frozen=True, slots=True)
class _Conversation:
    """Structural facts about the message list (block types and tool inputs; little text)."""

    task_content: str | list[Block] | None
    task_text: str
    """The task turn's sampled text (:func:`user_text`); empty when there is none."""
    task_from_history: bool
    proposal: str
    """The assistant's text the task turn replies to (see :func:`_proposal`); empty if none."""
    last_turn: str
    user_turns: int
    tool_calls: int
    tool_results: int
    tool_errors: int
    tool_result_chars: int
    tool_loop_depth: int
    history_thinking: bool
    loop_calls: int
    loop_files: int
    loop_errors: int
    loop_retries: int


_TEXT, _USE, _RESULT, _THOUGHT = 1, 2, 4, 8
_BLOCK_BITS: Final[Mapping[Any, int]] = {
    "text": _TEXT,
    "tool_use": _USE,
    "server_tool_use": _USE,
    "tool_result": _RESULT,
    "thinking": _THOUGHT,
    "redacted_thinking": _THOUGHT,
}


def _conversation(all_messages: Sequence[MessageParam]) -> _Conversation:
    # System-role messages are context, never a turn: they are left out before anything is read.
    messages = (
        all_messages if all(m.role != "system" for m in all_messages)
        else [m for m in all_messages if m.role != "system"]
    )
    # One pass over the blocks turns each message into a bit mask; everything else is read
    # from the masks, so a 300-message history costs one cheap loop, not several.
    masks: list[int] = []
    uses: list[int] = []  # tool calls per message
    flagged: list[int] = []  # tool results flagged is_error per message
    for message in messages:
        content = message.content
        if isinstance(content, str):
            masks.append(_TEXT)
            uses.append(0)
            flagged.append(0)
            continue
        mask = calls = errors = 0
        for block in content:
            kind = block.get("type")
            bit = _BLOCK_BITS.get(kind, 0) if isinstance(kind, str) else 0
            mask |= bit
            calls += bit == _USE
            errors += bit == _RESULT and block.get("is_error") is True
        masks.append(mask)
        uses.append(calls)
        flagged.append(errors)
    tool_calls = sum(uses)
    roles = [m.role == "user" for m in messages]
    pairs = list(zip(roles, masks, strict=True))
    user_turns = sum(1 for is_user, mask in pairs if is_user and mask & _TEXT)
    history_thinking = any(mask & _THOUGHT for is_user, mask in pairs if not is_user)

    last = len(messages) - 1
    if last < 0:
        last_turn = "text"
    elif not roles[last]:
        last_turn = "prefill"
    elif masks[last] & _RESULT and not user_text(messages[last].content):
        last_turn = "tool_result"
    else:
        last_turn = "text"

    # Latest user turn's tool results: how many, how big, whether they read like failures.
    results = errors = chars = 0
    latest_user = next((i for i in range(last, -1, -1) if roles[i]), None)
    if latest_user is not None and masks[latest_user] & _RESULT:
        for block in _results(messages[latest_user]):
            results += 1
            text = _result_text(block.get("content"))
            chars += len(text)
            errors += _failed(block, text, read=results <= _RESULTS_READ)

    depth = 0
    i = last - 1 if last >= 0 and not roles[last] else last  # a prefill does not end a loop
    while i >= 1 and roles[i] and not roles[i - 1] and masks[i] & _RESULT and masks[i - 1] & _USE:
        depth += 1
        i -= 2

    task_at: int | None = None
    task_text = ""
    from_history = False
    for i in range(last, max(-1, last - _SCAN_BACK), -1):
        if not roles[i]:
            continue
        if masks[i] & _TEXT:
            task_text = user_text(messages[i].content)
            if task_text:
                task_at = i
                break
        from_history = True
    proposal = ""
    if task_at is not None and task_at == last and task_at >= 1 and not roles[task_at - 1]:
        proposal = _proposal(messages[task_at - 1].content, task_text)
    since = 0 if task_at is None else task_at + 1
    loop_errors = sum(flagged[since:])
    if latest_user is not None and latest_user >= since:
        loop_errors += errors - flagged[latest_user]  # the latest results' words were read
    loop_files, loop_retries = _files_and_retries(messages, masks, since)
    return _Conversation(
        task_content=messages[task_at].content if task_at is not None else None,
        task_text=task_text,
        task_from_history=from_history and task_at is not None,
        proposal=proposal,
        last_turn=last_turn,
        user_turns=user_turns,
        tool_calls=tool_calls,
        tool_results=results,
        tool_errors=errors,
        tool_result_chars=chars,
        tool_loop_depth=depth,
        history_thinking=history_thinking,
        loop_calls=sum(uses[since:]),
        loop_files=loop_files,
        loop_errors=loop_errors,
        loop_retries=loop_retries,
    )


def _proposal(assistant: str | list[Block], reply: str) -> str:
    """The assistant's text when it ended on a question and the user's turn (``reply``, its
    text) is a short reply to it: an approval ("yes go ahead") or a choice carries the weight of
    what was proposed, not of its own few words. Empty otherwise."""
    if len(reply) > _REPLY_MAX:
        return ""
    asked = user_text(assistant)
    return asked[-_PROPOSAL_READ:] if asked.endswith(("?", "\uff1f")) else ""


def _files_and_retries(
    messages: Sequence[MessageParam], masks: list[int], since: int
) -> tuple[int, int]:
    """Return the distinct files the latest calls since message ``since`` touched, and how many
    of those calls repeat another exactly. Only the latest calls are compared, newest first, so
    a long loop costs no more than a short one."""
    compared = retries = 0
    files: set[str] = set()
    seen: set[tuple[Any, ...]] = set()
    for i in range(len(messages) - 1, since - 1, -1):
        content = messages[i].content
        if not masks[i] & _USE or isinstance(content, str):
            continue
        for block in content:
            if block.get("type") not in ("tool_use", "server_tool_use"):
                continue
            arguments = block.get("input")
            key = (block.get("name"), *_call_key(arguments))
            # Each repeat of an identical call is a step retried (a test re-run, a re-read).
            retries += key in seen
            seen.add(key)
            if isinstance(arguments, dict):
                files.update(
                    v[:300] for k, v in arguments.items()
                    if k in _TARGET_KEYS and isinstance(v, str) and v
                )
            compared += 1
            if compared == _CALLS_COMPARED:
                return len(files), retries
    return len(files), retries


def _call_key(arguments: Any) -> tuple[Any, ...]:
    """A hashable summary of a tool call's input: scalar values, long strings cut short."""
    if not isinstance(arguments, dict):
        return ()
    return tuple(
        (k, v[:200] if isinstance(v, str) else v if isinstance(v, int | float) else None)
        for k, v in sorted(arguments.items())
    )


def _results(message: MessageParam) -> list[Block]:
    content = message.content
    if isinstance(content, str):
        return []
    return [b for b in content if b.get("type") == "tool_result"]


def _failed(block: Block, text: str, *, read: bool) -> bool:
    """Whether a tool result failed: flagged ``is_error``, or (when read) its opening reads
    like a failure."""
    if block.get("is_error") is True:
        return True
    return read and bool(text) and TOOL_FAILURE.found(view(text[:_RESULT_SAMPLE]))


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
        )
    return ""


def _agent_hash(agent_id: str) -> str:
    """A short, non-reversible stand-in for an agent id: equal ids give equal hashes."""
    if not agent_id:
        return ""
    return hashlib.blake2b(agent_id.encode(), digest_size=6, person=b"router-agent").hexdigest()


# -- entry point ---------------------------------------------------------------------------------


def classify(
    parsed: Parsed,
    estimate: TokenEstimate,
    *,
    token_factor: float,
    requested_tier: str,
    complexity: ComplexityConfig | None = None,
    scorer: Scorer | None = None,
    tasks: TaskMemo | None = None,
) -> Features:
    """Compute the routing features of a parsed request.

    Pure: no I/O, no clock, no shared state. Reads the whole message list only for cheap
    structural facts; text is read from the task turn alone, through bounded windows.

    Args:
        parsed: The decoded request and its headers.
        estimate: Raw token counts from :class:`router.routing.tokens.TokenCounter`.
        token_factor: Scale from raw counts to the target model's tokens (config or learned).
        requested_tier: Tier of the requested model (``haiku``/``sonnet``/``opus``/``other``).
        complexity: ``router.yaml``'s thresholds for the ``complexity`` levels; unset ones are
            the scorer's own (chosen by cross-validation when it was fitted).
        scorer: The complexity model; the one shipped in the package by default.
        tasks: Task signals already read, by text (an agent loop repeats its task turn); the
            only state it touches, and only to save reading a text again.

    Returns:
        The features routing rules test.
    """
    values = measure(parsed, estimate, token_factor=token_factor, requested_tier=requested_tier,
                     tasks=tasks)
    return judge(values, scorer or default_scorer(), complexity)


def judge(values: dict[str, Any], scorer: Scorer, complexity: ComplexityConfig | None = None
          ) -> Features:
    """Score measured feature values and return them as :class:`Features` (``values`` gains
    ``complexity_score`` and ``complexity``)."""
    score = scorer.score(values)
    values["complexity_score"] = round(score, 1)
    values["complexity"] = scorer.level(score, complexity)
    return Features(**values)


def measure(
    parsed: Parsed, estimate: TokenEstimate, *, token_factor: float, requested_tier: str,
    tasks: TaskMemo | None = None,
) -> dict[str, Any]:
    """Return every feature of a request but the two the scorer computes from the others
    (``complexity_score``, ``complexity``), by name. See :func:`classify`."""
    request = parsed.request
    headers = parsed.headers
    conv = _conversation(request.messages)
    task = conv.task_content
    task_chars = full_length(task) if task is not None else 0
    if conv.proposal:
        # A short reply is read with the question it answers: its weight is the proposal's.
        text = f"{conv.proposal}\n\n{conv.task_text}"
        sig = read_task(text, len(text), seen=tasks)
    else:
        sig = read_task(conv.task_text, task_chars, seen=tasks)

    thinking_block = request.thinking or {}
    kind = thinking_block.get("type")
    thinking = kind if kind in ("enabled", "adaptive") else "none"
    raw_budget = thinking_block.get("budget_tokens")
    budget = raw_budget if isinstance(raw_budget, int) and thinking == "enabled" else 0
    output = request.output_config or {}
    raw_effort = output.get("effort")
    effort = raw_effort if isinstance(raw_effort, str) else ""
    choice = request.tool_choice or {}
    raw_choice = choice.get("type")
    tool_choice = raw_choice if isinstance(raw_choice, str) else ""
    prefill = conv.last_turn == "prefill"
    structured = (
        bool(output.get("format")) or tool_choice in ("tool", "any")
        or (prefill and _opens_structure(request.messages))
    )
    max_tokens = request.max_tokens if isinstance(request, MessagesRequest) else 0
    metadata = request.metadata if isinstance(request, MessagesRequest) else None
    raw_user = (metadata or {}).get("user_id")
    tools = request.tools or []
    request_class = headers.get("x-claude-code-request-class", "").strip().lower()
    agent_id = headers.get("x-claude-code-agent-id", "").strip()
    return {
        "input_tokens": round(estimate.tokens * token_factor),
        "max_tokens": max_tokens,
        "system_tokens": estimate.system,
        "hard_markers": sig.hard,
        "reasoning_markers": sig.reasoning,
        "simple_markers": sig.simple,
        "proof": sig.proof,
        "math": sig.math,
        "brevity": sig.brevity,
        "basics": sig.basics,
        "generative": sig.explain,
        "steps": sig.steps,
        "code_lines": sig.code_lines,
        "data_lines": sig.data_lines,
        "prose_words": sig.prose_words,
        "task_chars": task_chars,
        "task_from_history": conv.task_from_history,
        "task_from_proposal": bool(conv.proposal),
        "system_spec": system_is_spec(request.system),
        "structured_output": structured,
        "prefill": prefill,
        "messages": len(request.messages),
        "user_turns": conv.user_turns,
        "last_turn": conv.last_turn,
        "tools": len(tools),
        "tool_names": tuple(t["name"] for t in tools if isinstance(t.get("name"), str)),
        "tool_choice": tool_choice,
        "tool_calls": conv.tool_calls,
        "tool_results": conv.tool_results,
        "tool_errors": conv.tool_errors,
        "tool_result_chars": conv.tool_result_chars,
        "tool_loop_depth": conv.tool_loop_depth,
        "loop_calls": conv.loop_calls,
        "loop_files": conv.loop_files,
        "loop_errors": conv.loop_errors,
        "loop_retries": conv.loop_retries,
        "images": estimate.image_count,
        "documents": estimate.document_count,
        "thinking": thinking,
        "thinking_budget": budget,
        "history_thinking": conv.history_thinking,
        "effort": effort,
        "stream": parsed.stream,
        "requested_model": request.model,
        "requested_tier": requested_tier,
        "app": headers.get("x-app", ""),
        "user_agent": headers.get("user-agent", ""),
        "user_id": raw_user if isinstance(raw_user, str) else "",
        "session_id": headers.get("x-claude-code-session-id", ""),
        "request_class": request_class,
        "agent_id": _agent_hash(agent_id),
        "is_subagent": bool(agent_id or headers.get("x-claude-code-parent-agent-id", "").strip())
        or request_class == "subagent",
        "compaction": headers.get("x-claude-code-compaction", "").strip().lower() in _TRUTHY
        or request_class == "compaction",
        "api_key_alias": "",
    }


def _opens_structure(messages: Sequence[MessageParam]) -> bool:
    """Whether the prefill (the last non-system message) opens JSON, XML or a quoted value:
    the answer's shape is then fixed. A prefilled heading or sentence fixes only its start."""
    last = next(m for m in reversed(messages) if m.role != "system")
    content = last.content
    text = content if isinstance(content, str) else "".join(
        b["text"] for b in content if b.get("type") == "text" and isinstance(b.get("text"), str)
    )
    return text.lstrip()[:1] in ("{", "[", "<", '"')
