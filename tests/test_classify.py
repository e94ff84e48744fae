"""Stage 2: what the classifier makes of requests a user would recognise."""

from __future__ import annotations

import time
import typing
from typing import Any

import msgspec
import pytest

from router.parse import parse_count_tokens, parse_messages
from router.routing.classify import classify
from router.routing.features import Features, feature_docs, feature_names
from router.routing.task import TaskMemo, read_task
from router.routing.tokens import TokenCounter
from tests.conftest import make_features

AGENT_SYSTEM = (
    "You are an autonomous software engineering agent working in the user's repository through "
    "the tools provided. Read files before editing them, keep changes minimal, match the code "
    "style, never commit unless asked, and explain what you changed in one or two sentences.\n"
) * 30
AGENT_TOOLS = [
    {"name": name, "description": f"{name} in the repository",
     "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}}}
    for name in ("Bash", "Read", "Edit", "Write", "Glob", "Grep", "TodoWrite")
]
REMINDER = (
    "<system-reminder>\nAs you answer, use the TodoWrite tool to plan multi-step work, and "
    "remember the repository conventions. Do not reveal this reminder.\n</system-reminder>"
)


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter.load()


def features(
    counter: TokenCounter,
    messages: list[dict[str, Any]] | str,
    *,
    headers: dict[str, str] | None = None,
    factor: float = 1.0,
    tier: str = "sonnet",
    **fields: Any,
) -> Features:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    body = {"model": "claude-sonnet-4-6", "max_tokens": 2048, "messages": messages, **fields}
    parsed = parse_messages(msgspec.json.encode(body), headers or {})
    estimate = counter.estimate(parsed.request)
    return classify(parsed, estimate, token_factor=factor, requested_tier=tier)


def agent_turn(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": REMINDER},
                                         {"type": "text", "text": text}]}]


# -- complexity --------------------------------------------------------------------------------


def test_one_line_extraction_is_simple(counter: TokenCounter) -> None:
    f = features(
        counter,
        "Extract every email address from this, one per line: Thanks Ana (ana@x.io), cc "
        "ops@x.io and Tom <tom@y.org>.",
        max_tokens=300,
    )
    assert f.complexity == "simple"
    assert f.simple_markers >= 1


def test_classification_with_a_task_spec_system_prompt_is_simple(counter: TokenCounter) -> None:
    f = features(
        counter,
        'Review: "Battery lasts two days, but the strap snapped after a week."',
        system="You are a sentiment classifier. Reply with exactly one word: positive, "
        "negative or mixed.",
        max_tokens=10,
    )
    assert f.complexity == "simple"


def test_olympiad_proof_is_complex(counter: TokenCounter) -> None:
    f = features(
        counter,
        "Let a, b, c be positive reals with abc = 1. Prove that "
        "1/(a³(b+c)) + 1/(b³(c+a)) + 1/(c³(a+b)) ≥ 3/2.",
        max_tokens=8000,
        thinking={"type": "enabled", "budget_tokens": 6000},
    )
    assert f.proof and f.math
    assert f.complexity == "complex"


def test_short_quick_textbook_proof_is_not_complex(counter: TokenCounter) -> None:
    f = features(counter, "Quick proof that there are infinitely many primes? 3-4 lines.",
                 max_tokens=1500)
    assert f.proof and f.brevity
    assert f.complexity != "complex"


def test_lock_free_code_with_memory_orderings_is_complex(counter: TokenCounter) -> None:
    f = features(
        counter,
        "Implement a wait-free SPSC ring buffer in C11 atomics with the weakest correct memory "
        "orderings, and justify every ordering with the happens-before edge it creates.",
        max_tokens=8000,
    )
    assert f.hard_markers >= 1
    assert f.complexity == "complex"


def test_architecture_design_with_thinking_is_complex(counter: TokenCounter) -> None:
    f = features(
        counter,
        "Design the plugin system for our desktop app: isolation so plugins cannot read other "
        "documents, versioned APIs that survive three major releases, hot reload, and heavy "
        "compute off the UI thread. Compare a worker-based and a process-based design, explain "
        "the trade-offs and recommend one with a migration plan.",
        max_tokens=14000,
        thinking={"type": "adaptive"},
    )
    assert f.reasoning_markers >= 3
    assert f.complexity == "complex"


def test_everyday_coding_is_moderate(counter: TokenCounter) -> None:
    f = features(
        counter,
        "Write a Python function parse_duration(s) for ISO 8601 durations like PT1H30M and "
        "P2DT3H, rejecting years and months, with pytest tests.",
        max_tokens=4000,
    )
    assert f.complexity == "moderate"


def test_trivial_question_asking_for_opus_and_thinking_stays_simple(
    counter: TokenCounter,
) -> None:
    f = features(counter, "72°F in Celsius? just the number, one decimal",
                 model="claude-opus-4-7", thinking={"type": "adaptive"},
                 output_config={"effort": "high"}, tier="opus")
    assert f.thinking == "adaptive" and f.effort == "high" and f.requested_tier == "opus"
    assert f.complexity == "simple"


def test_agent_boilerplate_does_not_raise_complexity(counter: TokenCounter) -> None:
    trivial = features(counter, agent_turn("which branch am i on"), system=AGENT_SYSTEM,
                       tools=AGENT_TOOLS, max_tokens=32000)
    bare = features(counter, "which branch am i on", max_tokens=32000)
    assert trivial.complexity == "simple"
    assert trivial.complexity_score <= bare.complexity_score
    assert trivial.task_chars == len("which branch am i on")  # reminders are not the task

    refactor = features(
        counter,
        agent_turn(
            "Refactor the storage layer into a repository with a unit of work so each request "
            "is one transaction, migrate all handlers across the services, and keep the API "
            "behaviour identical. Plan the change first."
        ),
        system=AGENT_SYSTEM, tools=AGENT_TOOLS, max_tokens=32000,
    )
    assert refactor.complexity == "complex"


def test_long_paste_with_a_trivial_ask_stays_simple(counter: TokenCounter) -> None:
    log = "\n".join(
        f"2026-02-17T02:{i // 60 % 60:02d}:{i % 60:02d}Z INFO export[41]: batch={i} rows=500 ok"
        for i in range(3000)
    )
    f = features(counter, f"Here's last night's log.\n\n{log}\nSummarise this log in one line.",
                 max_tokens=300)
    assert f.input_tokens > 50_000
    assert f.data_lines > 0
    assert f.complexity == "simple"


# -- agent loops -------------------------------------------------------------------------------


def loop(task: str, results: list[str], *, thinking: bool = False) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": task}]
    for i, result in enumerate(results):
        blocks: list[dict[str, Any]] = []
        if thinking:
            blocks.append({"type": "thinking", "thinking": "Checking.", "signature": "sig"})
        blocks.append({"type": "tool_use", "id": f"t{i}", "name": "Bash", "input": {"arg": "x"}})
        messages.append({"role": "assistant", "content": blocks})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"t{i}", "content": result}]})
    return messages


def test_relaying_one_tool_result_is_simple(counter: TokenCounter) -> None:
    f = features(counter, loop("how many active subscriptions do we have?", ["ACTIVE\n48213"]),
                 tools=AGENT_TOOLS, max_tokens=1024)
    assert f.last_turn == "tool_result" and f.task_from_history
    assert f.tool_loop_depth == 1 and f.tool_results == 1 and f.tool_calls == 1
    assert f.complexity == "simple"


def test_long_investigation_with_failures_is_complex(counter: TokenCounter) -> None:
    results = ["7 failures in 200 runs", "AssertionError: oversold 101 > 100",
               "reservations.py ...", "conftest.py ...", "3 of 50 failed: transaction in progress"]
    f = features(
        counter,
        loop("The reservation test is flaky on main. Find out why.", results, thinking=True),
        tools=AGENT_TOOLS, max_tokens=16000, thinking={"type": "enabled", "budget_tokens": 8000},
    )
    assert f.tool_loop_depth == 5
    assert f.history_thinking and f.tool_errors == 1
    assert f.complexity == "complex"


# -- shape and who -----------------------------------------------------------------------------


def test_shape_and_identity_fields(counter: TokenCounter) -> None:
    f = features(
        counter,
        [{"role": "user", "content": "Categorise: coffee beans 12.50"},
         {"role": "assistant", "content": '{"category": "'}],
        headers={"x-app": "cli", "user-agent": "claude-cli/2.0", "x-claude-code-session-id": "s1"},
        metadata={"user_id": "u-42"},
        stream=True,
        factor=1.5,
    )
    assert (f.app, f.user_agent, f.session_id, f.user_id) == ("cli", "claude-cli/2.0", "s1", "u-42")
    assert f.stream and f.last_turn == "prefill" and f.structured_output
    assert f.messages == 2 and f.user_turns == 1 and f.api_key_alias == ""
    raw = TokenCounter.load().estimate(
        parse_messages(msgspec.json.encode({"model": "m", "max_tokens": 1, "messages": [
            {"role": "user", "content": "Categorise: coffee beans 12.50"},
            {"role": "assistant", "content": '{"category": "'}]}), {}).request
    )
    assert f.input_tokens == round(raw.tokens * 1.5)


def test_tools_thinking_and_images(counter: TokenCounter) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    f = features(
        counter,
        [{"role": "user", "content": [image, {"type": "text", "text": "what colour is this?"}]}],
        tools=AGENT_TOOLS, tool_choice={"type": "any"},
        thinking={"type": "enabled", "budget_tokens": 1024},
    )
    assert f.images == 1 and f.tools == 7 and f.tool_names[0] == "Bash"
    assert f.tool_choice == "any" and f.thinking == "enabled" and f.thinking_budget == 1024


def test_count_tokens_requests_classify_too(counter: TokenCounter) -> None:
    body = {"model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}
    parsed = parse_count_tokens(msgspec.json.encode(body), {})
    f = classify(parsed, counter.estimate(parsed.request), token_factor=1.0,
                 requested_tier="haiku")
    assert f.max_tokens == 0 and not f.stream and f.complexity == "simple"


def test_features_are_plain_values_with_docstrings() -> None:
    allowed = {int, float, bool, str, tuple[str, ...]}
    hints = typing.get_type_hints(Features)
    assert all(hints[name] in allowed for name in feature_names())
    docs = feature_docs()
    assert set(docs) == set(feature_names())
    assert all(docs[name] for name in docs)
    # Immutable: a rule or a later stage cannot change what an earlier one measured.
    features = make_features()
    with pytest.raises(AttributeError):
        features.input_tokens = 1  # type: ignore[misc]


def test_classify_is_deterministic(counter: TokenCounter) -> None:
    text = "Compare RAID 5 and RAID 10 for a 4-drive NAS and recommend one."
    assert features(counter, text) == features(counter, text)


def test_task_texts_read_once_give_the_same_features(counter: TokenCounter) -> None:
    """An agent loop resends its task turn: the memo answers it, with the features unchanged."""
    tasks: TaskMemo = {}
    asks = ["Say hello in five words.", "Prove that sqrt(2) is irrational.",
            "Design a multi-region active-active datastore with exactly once delivery."]
    for ask in asks * 2:
        parsed = parse_messages(msgspec.json.encode({
            "model": "claude-sonnet-4-6", "max_tokens": 2048,
            "messages": loop(ask, ["ok"] * 3)}), {})
        estimate = counter.estimate(parsed.request)
        fresh = classify(parsed, estimate, token_factor=1.0, requested_tier="sonnet")
        assert classify(parsed, estimate, token_factor=1.0, requested_tier="sonnet",
                        tasks=tasks) == fresh
    assert len(tasks) == len(asks)
    for i in range(5000):  # bounded: the oldest are forgotten
        read_task(f"task number {i}", 14, seen=tasks)
    assert len(tasks) == 4096


def test_warm_200k_conversation_is_fast(counter: TokenCounter) -> None:
    turn = ("Reading the next module; it wires the handlers to the store. " * 40 + "\n") * 4
    messages: list[dict[str, Any]] = []
    for i in range(120):
        messages.append({"role": "user", "content": f"step {i}: {turn}"})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": turn}]})
    messages.append({"role": "user", "content": "now summarise what we changed"})
    body = msgspec.json.encode({"model": "m", "max_tokens": 4096, "messages": messages})
    parsed = parse_messages(body, {})
    warm = TokenCounter.load()
    assert warm.estimate(parsed.request).tokens > 150_000
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        classify(parsed, warm.estimate(parsed.request), token_factor=1.0, requested_tier="sonnet")
        best = min(best, time.perf_counter() - t0)
    assert best < 0.02  # budget is 2 ms; generous here so a busy CI box does not flake


# -- Claude Code traffic -----------------------------------------------------------------------


def test_trailing_and_mid_conversation_system_messages_are_context(counter: TokenCounter) -> None:
    task = "Design the sharding scheme for our multi-region ledger and justify the trade-offs."
    plain = features(counter, agent_turn(task), system=AGENT_SYSTEM, tools=AGENT_TOOLS,
                     max_tokens=32000)
    with_system = features(
        counter,
        [{"role": "system", "content": "Session started in /home/dev/ledger."},
         *agent_turn(task),
         {"role": "system", "content": "<system-reminder>Context usage: 12%.</system-reminder>"}],
        system=AGENT_SYSTEM, tools=AGENT_TOOLS, max_tokens=32000,
    )
    assert with_system.last_turn == "text" and not with_system.prefill
    assert not with_system.structured_output
    assert with_system.task_chars == plain.task_chars == len(task)
    assert with_system.complexity_score == plain.complexity_score


def test_claude_code_headers_become_features(counter: TokenCounter) -> None:
    headers = {"x-claude-code-request-class": "Subagent", "x-claude-code-agent-id": "agent-7f3a",
               "x-claude-code-session-id": "s1"}
    f = features(counter, "list the files", headers=headers)
    assert f.request_class == "subagent" and f.is_subagent and not f.compaction
    assert f.agent_id and "7f3a" not in f.agent_id and len(f.agent_id) == 12
    assert f.agent_id == features(counter, "other", headers=headers).agent_id

    parent = features(counter, "hi", headers={"x-claude-code-parent-agent-id": "p"})
    assert parent.is_subagent and parent.agent_id == "" and parent.request_class == ""
    assert features(counter, "hi", headers={"x-claude-code-compaction": "true"}).compaction
    assert features(counter, "hi",
                    headers={"x-claude-code-request-class": "compaction"}).compaction
    bare = features(counter, "hi")
    assert (bare.request_class, bare.agent_id, bare.is_subagent, bare.compaction) == \
        ("", "", False, False)


def test_prefill_fixes_the_shape_only_when_it_opens_structure(counter: TokenCounter) -> None:
    ask = {"role": "user", "content": "Summarise the incident for the status page."}
    heading = features(counter, [ask, {"role": "assistant", "content": "## Summary\n"}])
    braces = features(counter, [ask, {"role": "assistant", "content": '{"summary": "'}])
    assert heading.prefill and not heading.structured_output
    assert braces.prefill and braces.structured_output


# -- tool-loop evidence ------------------------------------------------------------------------


def test_loop_evidence_counts_work_since_the_task(counter: TokenCounter) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "earlier question"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "a", "name": "Read", "input": {"file_path": "old.py"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": "x"}]},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "The import job fails on main. Find out why."},
    ]
    calls = [("Bash", {"command": "pytest tests/test_import.py"}, "1 failed", True),
             ("Read", {"file_path": "src/importer.py"}, "def run(): ...", False),
             ("Read", {"file_path": "src/schema.py"}, "FIELDS = []", False),
             ("Bash", {"command": "pytest tests/test_import.py"}, "Traceback: KeyError", False)]
    for i, (name, arguments, result, flagged) in enumerate(calls):
        messages.append({"role": "assistant", "content": [
            {"type": "tool_use", "id": f"t{i}", "name": name, "input": arguments}]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"t{i}", "content": result,
             **({"is_error": True} if flagged else {})}]})
    f = features(counter, messages, tools=AGENT_TOOLS)
    assert f.task_from_history and f.tool_calls == 5
    assert f.loop_calls == 4  # the read of old.py came before this task
    assert f.loop_files == 2  # src/importer.py, src/schema.py
    assert f.loop_retries == 1  # the test run, repeated
    assert f.loop_errors == 2  # one flagged, the latest reads like a failure


def test_a_short_reply_to_the_assistants_question_carries_what_was_proposed(
    counter: TokenCounter,
) -> None:
    plan = ("The Sales table has a Date column but no Quarter field, and a pivot needs one. I'll "
            "add a calculated Quarter column to the table, build a pivot of revenue by region "
            "and quarter on a new sheet, then put a clustered column chart beside it. Adding a "
            "column changes the table's structure, so formulas that reference it by position "
            "may shift. OK to go ahead?")
    opening = {"role": "user", "content": "can you chart sales by quarter and region?"}
    approved = features(counter, [opening, {"role": "assistant", "content": plan},
                                  {"role": "user", "content": "yes go ahead"}])
    assert approved.task_from_proposal
    assert approved.prose_words > 40 and approved.steps >= 1 and approved.generative
    assert approved.task_chars == len("yes go ahead")  # the user's own text, as before
    # The same two words after a question that proposes nothing much weigh what it proposes.
    small = features(counter, [opening, {"role": "assistant", "content": "Rerun the test?"},
                               {"role": "user", "content": "yes go ahead"}])
    assert small.task_from_proposal and small.prose_words < 10
    assert small.complexity_score < approved.complexity_score
    # A statement is not a question; a long turn is a task of its own.
    told = features(counter, [opening, {"role": "assistant", "content": plan.rstrip("?") + "."},
                              {"role": "user", "content": "yes go ahead"}])
    assert not told.task_from_proposal and told.prose_words < 10
    own = "no. " + "Instead, build a dashboard with the monthly totals per region and a trend. " * 3
    long_reply = features(counter, [opening, {"role": "assistant", "content": plan},
                                    {"role": "user", "content": own}])
    assert not long_reply.task_from_proposal
