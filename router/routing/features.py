"""The :class:`Features` record: what routing rules in ``router.yaml`` can test, by field name.

This is the one place to add a feature: declare the field here with a docstring (``router
explain`` and ``router check`` show it), then compute it in :mod:`router.routing.classify`. Every
field is a plain scalar or a tuple of strings, so rules can compare it, and so the complexity model
(:mod:`router.routing.scorer`) can weigh it: ``router explain`` shows what each one contributed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

from router.attrdocs import attribute_docs

COMPLEXITY_LEVELS: Final = ("simple", "moderate", "complex")


class Features(msgspec.Struct, frozen=True):
    """What routing rules can test about one request. All fields are plain values.

    A frozen Struct rather than a frozen dataclass: built once per request from 56 values,
    which a frozen dataclass's ``__init__`` does one ``object.__setattr__`` at a time (~19 µs
    against ~1 µs).
    """

    # -- size --
    input_tokens: int
    """Estimated input tokens (system, tools, messages, images, documents), already scaled by the
    model's token factor."""
    max_tokens: int
    """``max_tokens`` the client asked for (0 for count_tokens)."""
    system_tokens: int
    """Unscaled tokens of the system prompt alone."""

    # -- complexity --
    complexity_score: float
    """How hard the task is, 0-100: the fitted model's expected tier (0 Haiku work, 50 Sonnet,
    100 Opus) from the other features (``router explain`` lists what each added)."""
    complexity: str
    """``simple``, ``moderate`` or ``complex``: ``complexity_score`` against the thresholds
    (``complexity:`` in router.yaml, else the model's cross-validated ones)."""
    hard_markers: int
    """Kinds of specialist depth named in the task (formal methods, concurrency, distributed
    consistency, security analysis, theory, advanced maths/science, algorithm bounds)."""
    reasoning_markers: int
    """Kinds of analysis asked for (design, trade-offs, diagnosis, planning, critique,
    justification, performance, cross-cutting implications, refactoring)."""
    simple_markers: int
    """Kinds of mechanical work asked for (extract, classify, transform/format, translate a short
    text, look up one fact, small talk)."""
    proof: bool
    """The task asks for a proof or a derivation."""
    math: bool
    """The task contains maths notation or vocabulary."""
    brevity: bool
    """The task asks for a short answer (one word/line, just the number, a few lines)."""
    basics: bool
    """The task is pitched at beginners (a junior, a student, simple terms): textbook level."""
    generative: bool
    """The task asks to write, explain, build or change something (not a lookup or a
    mechanical edit of a short text)."""
    steps: int
    """Distinct asks in the instruction: questions, numbered or bulleted requests, imperative
    sentences."""
    code_lines: int
    """Lines that look like code in the task text (sampled window)."""
    data_lines: int
    """Lines that look like pasted data (CSV, logs, JSON) in the task text (sampled window)."""
    prose_words: int
    """Words of instruction prose in the task text (code and data lines excluded)."""
    task_chars: int
    """Characters of the task message's text, in full."""
    task_from_history: bool
    """The latest user turn held only tool results, so the task is an earlier user turn."""
    task_from_proposal: bool
    """The latest user turn is a short reply (an approval, a choice) to a question the
    assistant's last turn ended on: the task is read from that turn's text with the reply."""
    system_spec: bool
    """A short system prompt states a mechanical task ("Classify ... Reply with one word");
    personas and agent harnesses never do."""
    structured_output: bool
    """The output's shape is fixed: a JSON schema format, a forced tool choice, or a prefill
    that opens JSON, XML or a quoted value."""
    prefill: bool
    """The last message (system-role messages aside) is the assistant's: the answer's opening
    is given."""

    # -- shape --
    messages: int
    """Number of messages."""
    user_turns: int
    """User messages with text (tool-result-only turns excluded)."""
    last_turn: str
    """What the last message is, system-role messages aside: ``text`` (user text),
    ``tool_result`` or ``prefill`` (assistant)."""
    tools: int
    """Number of tool definitions."""
    tool_names: tuple[str, ...]
    """Names of the defined tools (server tools by their ``name``)."""
    tool_choice: str
    """``tool_choice.type`` (``auto``, ``any``, ``tool``, ``none``) or empty."""
    tool_calls: int
    """``tool_use`` blocks in the whole conversation."""
    tool_results: int
    """``tool_result`` blocks in the latest user turn."""
    tool_errors: int
    """Latest tool results flagged ``is_error`` or that read like a failure."""
    tool_result_chars: int
    """Characters of text in the latest tool results."""
    tool_loop_depth: int
    """Consecutive trailing rounds of assistant ``tool_use`` answered by user ``tool_result``."""
    loop_calls: int
    """Tool calls since the task turn: the work done so far on the task at hand."""
    loop_files: int
    """Distinct files, URLs or other targets named by the latest 32 tool calls since the task
    turn."""
    loop_errors: int
    """Tool results since the task turn that failed: flagged ``is_error``, or (in the latest
    turn) reading like a failure."""
    loop_retries: int
    """Tool calls since the task turn (the latest 32) that repeat an earlier call exactly: a step
    retried."""
    images: int
    """Image blocks anywhere in the request."""
    documents: int
    """Document blocks anywhere in the request."""
    thinking: str
    """``none``, ``enabled`` or ``adaptive``."""
    thinking_budget: int
    """``thinking.budget_tokens`` (0 when absent)."""
    history_thinking: bool
    """Earlier assistant turns carry ``thinking`` or ``redacted_thinking`` blocks."""
    effort: str
    """``output_config.effort`` (``low`` ... ``max``) or empty."""
    stream: bool
    """The client asked for SSE."""
    requested_model: str
    """The ``model`` the client asked for."""
    requested_tier: str
    """Tier of the requested model: ``haiku``, ``sonnet``, ``opus`` or ``other``."""

    # -- who --
    app: str
    """The ``x-app`` header (e.g. ``cli`` for Claude Code)."""
    user_agent: str
    """The ``user-agent`` header."""
    user_id: str
    """``metadata.user_id``."""
    session_id: str
    """The ``x-claude-code-session-id`` header."""
    request_class: str
    """The ``x-claude-code-request-class`` header, lower-cased (``main``, ``subagent``,
    ``workflow``, ``compaction``, ``auxiliary``); empty when absent."""
    agent_id: str
    """A short non-reversible hash of ``x-claude-code-agent-id`` (equal ids, equal hashes);
    empty when absent."""
    is_subagent: bool
    """A subagent's request: ``x-claude-code-agent-id`` or ``x-claude-code-parent-agent-id``
    present, or ``request_class`` is ``subagent``."""
    compaction: bool
    """A compaction request: ``x-claude-code-compaction`` is true, or ``request_class`` is
    ``compaction``."""
    api_key_alias: str
    """Alias of the API key used (not resolved yet: always empty)."""


def feature_names() -> tuple[str, ...]:
    """Return the names of all :class:`Features` fields, in declaration order."""
    return Features.__struct_fields__


def feature_docs() -> Mapping[str, str]:
    """Return each :class:`Features` field's docstring, for ``router explain`` and rule checks.

    Empty when the source is not available, e.g. in a zipped install.
    """
    return attribute_docs(Features)
