"""Conversations as a unit of routing: identity, history, state, and when a conversation moves.

Pure unit tests on the shipped router.yaml's policy; the end-to-end behaviour (store, relay,
real clients) is in tests/test_conversations_e2e.py.
"""

from __future__ import annotations

import json

import msgspec
import pytest

from router.routing.capabilities import Needs, needs_of
from router.routing.conversations import (
    Conversation,
    ConversationState,
    History,
    ModelCache,
    all_signatures,
    caller_of,
    conversation_id,
    history_of,
    payback,
    rewritten_body,
    signature_hash,
    state_after,
)
from router.routing.decide import decide
from router.routing.rules import Policy, parse_policy
from router.wire import MessageParam
from tests.conftest import config_text, make_features

NOW = 1_000_000.0
HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-7"
SIG = {HAIKU: "sig-by-haiku", SONNET: "sig-by-sonnet", OPUS: "sig-by-opus"}


def shipped() -> Policy:
    """The shipped router.yaml (its rules, tiers, prices, capabilities and conversations)."""
    return parse_policy(config_text("http://x"), "<test>")


def with_conversations(**changes: object) -> Policy:
    text = config_text("http://x")
    for key, value in changes.items():
        start = text.index(f"  {key}:")
        end = text.index("\n", start)
        text = text[:start] + f"  {key}: {value}" + text[end:]
    return parse_policy(text, "<test>")


def history(*, signed_by: str | None = None, tool_loop: bool = False, turns: int = 2
            ) -> History:
    signatures = (signature_hash(SIG[signed_by]),) if signed_by else ()
    return History(tool_loop, signatures, signatures)


def state(model: str, *, cached: int = 0, ttl: float = 300, expires_in: float = 200,
          output: float = 300, elsewhere: dict[str, int] | None = None) -> ConversationState:
    caches = {model: ModelCache(cached, NOW + expires_in, ttl)} if cached else {}
    for other, tokens in (elsewhere or {}).items():
        caches[other] = ModelCache(tokens, NOW + expires_in, ttl)
    # The last request's estimate and reported input equal the cache: new text is then what the
    # next request's estimate adds above it.
    return ConversationState(model, 3, output, caches, NOW - 10, (), cached, cached)


def conversation(hist: History, st: ConversationState | None,
                 owners: dict[str, str] | None = None) -> Conversation:
    if owners is None:
        owners = {signature_hash(s): m for m, s in SIG.items()}
    return Conversation("c1", "caller", hist, st, owners, NOW)


def msgs(*turns: dict[str, object]) -> list[MessageParam]:
    return msgspec.convert(list(turns), list[MessageParam])


# ---------------------------------------------------------------------------- identity


def test_the_caller_is_a_hash_of_the_key_never_the_key() -> None:
    a = caller_of({"x-api-key": "sk-ant-secret-a"})
    assert a == caller_of({"authorization": "Bearer sk-ant-secret-a"})
    assert a != caller_of({"x-api-key": "sk-ant-secret-b"})
    assert "secret" not in a and len(a) == 16


def test_two_callers_with_the_same_opening_are_two_conversations() -> None:
    opening = msgs({"role": "user", "content": "Summarise our handbook."})
    a = conversation_id(caller_of({"x-api-key": "k1"}), {}, opening)
    b = conversation_id(caller_of({"x-api-key": "k2"}), {}, opening)
    assert a and b and a != b


def test_a_rolling_breakpoint_does_not_change_the_conversation() -> None:
    def opening(cached: bool) -> list[MessageParam]:
        block: dict[str, object] = {"type": "text", "text": "Here is the document. " * 500}
        if cached:
            block["cache_control"] = {"type": "ephemeral", "ttl": "1h"}
        return msgs({"role": "user", "content": [block]},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "next"})

    headers = {"x-claude-code-session-id": "s1"}
    assert conversation_id("c", headers, opening(True)) == conversation_id("c", headers,
                                                                            opening(False))


def test_session_and_subagent_ids_separate_conversations() -> None:
    opening = msgs({"role": "user", "content": "Fix the failing test."})
    main = conversation_id("c", {"x-claude-code-session-id": "s1"}, opening)
    other = conversation_id("c", {"x-claude-code-session-id": "s2"}, opening)
    agent = conversation_id("c", {"x-claude-code-session-id": "s1",
                                  "x-claude-code-agent-id": "a7"}, opening)
    assert len({main, other, agent}) == 3


# ---------------------------------------------------------------------------- history


def test_a_tool_result_turn_is_inside_a_tool_loop_even_with_a_trailing_system_message() -> None:
    h = history_of(msgs(
        {"role": "user", "content": "run the tests"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "t", "signature": "S1"},
            {"type": "tool_use", "id": "tu1", "name": "Bash", "input": {"command": "pytest"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu1",
                                      "content": "1 failed"}]},
        {"role": "system", "content": "Reminder: be concise."},
    ))
    assert h.in_tool_loop
    assert h.signatures == h.latest == (signature_hash("S1"),)


def test_a_new_user_turn_after_a_text_answer_is_not_a_tool_loop() -> None:
    h = history_of(msgs(
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "redacted_thinking", "data": "R1"}, {"type": "text", "text": "hello"}]},
        {"role": "user", "content": "and now?"},
    ))
    assert not h.in_tool_loop
    assert h.signatures == (signature_hash("R1"),)


def test_every_signature_is_found_only_when_asked() -> None:
    messages = msgs(
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "a",
                                           "signature": "A"}, {"type": "text", "text": "x"}]},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "b",
                                           "signature": "B"}, {"type": "text", "text": "y"}]},
        {"role": "user", "content": "q3"},
    )
    assert history_of(messages).latest == (signature_hash("B"),)
    assert all_signatures(messages) == (signature_hash("A"), signature_hash("B"))


# ---------------------------------------------------------------------------- decisions


def test_a_tool_loop_keeps_its_model_whatever_the_rules_say() -> None:
    conv = conversation(history(signed_by=HAIKU, tool_loop=True), state(HAIKU))
    d = decide(make_features(complexity="complex", requested_model=OPUS), shipped(),
               conversation=conv)
    assert (d.model, d.rule, d.action) == (HAIKU, "conversation", "tool-loop")
    assert "rules alone say claude-opus-4-7" in d.reason
    assert d.fallbacks == ()  # signed thinking: another model would refuse it
    assert d.strip == frozenset()


def test_a_tool_loop_whose_model_is_gone_moves_without_thinking() -> None:
    conv = conversation(history(signed_by=HAIKU, tool_loop=True), state(HAIKU))
    d = decide(make_features(complexity="moderate", thinking="enabled", requested_model=SONNET),
               shipped(), conversation=conv, available=lambda m: m != HAIKU)
    assert d.model == SONNET
    assert d.strip == {signature_hash(SIG[HAIKU])}
    assert d.drop == ("thinking",)
    assert "is unavailable" in d.reason


def test_a_new_user_turn_moves_up_when_the_rules_ask_for_more() -> None:
    conv = conversation(history(signed_by=SONNET), state(SONNET, cached=50_000))
    d = decide(make_features(complexity="complex", requested_model=OPUS, input_tokens=51_000),
               shipped(), conversation=conv)
    assert (d.model, d.action) == (OPUS, "up")
    assert d.strip == {signature_hash(SIG[SONNET])}


def test_a_warm_document_stays_rather_than_rewrite_its_cache() -> None:
    # 60k tokens cached for an hour on Opus: moving to Haiku rewrites them at $2/MTok.
    conv = conversation(history(), state(OPUS, cached=60_000, ttl=3600, expires_in=3000))
    d = decide(make_features(complexity="simple", requested_model=OPUS, input_tokens=60_200),
               shipped(), conversation=conv)
    assert (d.model, d.rule, d.action) == (OPUS, "conversation", "stay")
    assert "stays" in d.reason and "claude-haiku-4-5" in d.reason


def test_a_cold_conversation_moves_down_freely() -> None:
    conv = conversation(history(), state(OPUS, cached=60_000, expires_in=-1))
    d = decide(make_features(complexity="simple", requested_model=OPUS, input_tokens=60_200),
               shipped(), conversation=conv)
    assert (d.model, d.action) == (HAIKU, "down")
    assert "cache is cold" in d.reason


def test_a_small_chat_moves_down_because_the_move_pays_at_once() -> None:
    conv = conversation(history(), state(OPUS, cached=1_500, output=400))
    d = decide(make_features(complexity="simple", requested_model=OPUS, input_tokens=1_600),
               shipped(), conversation=conv)
    assert (d.model, d.action) == (HAIKU, "down")
    assert "moves down" in d.reason


def test_payback_arithmetic_is_what_the_prices_say() -> None:
    policy = shipped()
    conv = conversation(history(), state(OPUS, cached=10_000, ttl=300, output=200))
    prices = (policy.price_of(OPUS), policy.price_of(SONNET))
    assert prices[0] is not None and prices[1] is not None
    math = payback(conv, OPUS, SONNET, 11_000, (prices[0], prices[1]), 3)
    assert math is not None
    # Opus: 10k read at 0.50, 1k written at 6.25, 200 out at 25; Sonnet: 11k written at 3.75.
    assert math.stay == pytest.approx((10_000 * 0.5 + 1_000 * 6.25 + 200 * 25) / 1e6)
    assert math.move == pytest.approx((11_000 * 3.75 + 200 * 15) / 1e6)
    assert math.later == pytest.approx((11_000 * (0.5 - 0.3) + 200 * (25 - 15)) / 1e6)
    assert math.pays == (math.stay - math.move + 2 * math.later > 0)


def test_affinity_turn_and_sticky() -> None:
    conv = conversation(history(), state(OPUS, cached=60_000, ttl=3600))
    simple = make_features(complexity="simple", requested_model=OPUS, input_tokens=60_200)
    assert decide(simple, with_conversations(affinity="turn"), conversation=conv).model == HAIKU
    cold = conversation(history(), state(OPUS))
    d = decide(simple, with_conversations(affinity="sticky"), conversation=cold)
    assert (d.model, d.action) == (OPUS, "sticky")


def test_thinking_of_unknown_origin_is_taken_as_the_requested_models() -> None:
    # Nobody recorded the signer (the conversation began before this proxy kept its state):
    # inside a tool loop it stays on the requested model, the likeliest signer...
    loop = conversation(history(signed_by=SONNET, tool_loop=True), None, owners={})
    d = decide(make_features(complexity="simple", requested_model=SONNET), shipped(),
               conversation=loop)
    assert (d.model, d.rule, d.strip) == (SONNET, "conversation", frozenset())
    # ...and at a new user turn it may move, without the thinking it cannot vouch for.
    turn = conversation(history(signed_by=SONNET), None, owners={})
    d = decide(make_features(complexity="simple", requested_model=SONNET), shipped(),
               conversation=turn)
    assert d.model == HAIKU and d.strip == {signature_hash(SIG[SONNET])}


def test_a_user_turn_that_may_start_a_tool_loop_starts_at_the_floor() -> None:
    f = make_features(complexity="simple", tools=3, tool_choice="auto", requested_model=OPUS)
    d = decide(f, shipped(), conversation=conversation(history(turns=1), None))
    assert d.model == SONNET and "may start a tool loop" in d.reason
    forced = make_features(complexity="simple", tools=1, tool_choice="tool", requested_model=OPUS)
    assert decide(forced, shipped(), conversation=conversation(history(turns=1), None)
                  ).model == HAIKU


# ---------------------------------------------------------------------------- capabilities


def test_max_tokens_above_a_models_limit_never_reaches_it() -> None:
    f = make_features(complexity="simple", requested_model="claude-opus-4-7", max_tokens=100_000)
    d = decide(f, shipped(), needs=needs_of(f, None, ""))  # type: ignore[arg-type]
    assert d.model == SONNET
    assert "max_tokens 100000 > 64000 on claude-haiku-4-5" in d.reason


@pytest.mark.parametrize(
    ("thinking", "effort", "beta", "expected", "dropped"),
    [
        # Haiku 4.5 has neither adaptive thinking nor effort: both are hints a client may drop,
        # so the request still goes to Haiku, without them.
        ({"type": "adaptive"}, "", "", HAIKU, ("thinking",)),
        (None, "high", "", HAIKU, ("effort",)),
        # The 1M beta is not something to drop: the request moves to a model that takes it.
        (None, "", "context-1m-2025-08-07", SONNET, ()),
        ({"type": "enabled", "budget_tokens": 2048}, "", "", HAIKU, ()),
    ],
)
def test_capabilities_move_a_request_or_drop_what_the_model_cannot_take(
        thinking: dict[str, object] | None, effort: str, beta: str, expected: str,
        dropped: tuple[str, ...]) -> None:
    f = make_features(complexity="simple", requested_model=OPUS, effort=effort,
                 thinking=(thinking or {}).get("type", "none"))
    d = decide(f, shipped(), needs=needs_of(f, thinking, beta))  # type: ignore[arg-type]
    assert (d.model, d.drop) == (expected, dropped)


def test_enabled_thinking_on_an_adaptive_only_model_moves_down_not_fails() -> None:
    f = make_features(complexity="complex", requested_model=SONNET, thinking="enabled")
    needs = Needs(tokens=1000, max_tokens=1000, thinking="enabled", effort="",
                  betas=frozenset())
    d = decide(f, shipped(), needs=needs)  # type: ignore[arg-type]
    assert d.model == SONNET and "does not take enabled thinking" in d.reason


# ---------------------------------------------------------------------------- state and bodies


def test_state_remembers_what_is_cached_where_and_until_when() -> None:
    s = state_after(None, OPUS, now=NOW, cache_read=0, cache_written=20_000, written_1h=True,
                    output_tokens=100)
    assert s.caches[OPUS] == ModelCache(20_000, NOW + 3600, 3600)
    # A read refreshes the hour; a move records the new model beside the old one.
    s = state_after(s, OPUS, now=NOW + 100, cache_read=20_000, cache_written=500,
                    written_1h=False, output_tokens=300)
    assert s.caches[OPUS].expires_at == NOW + 100 + 3600
    s = state_after(s, HAIKU, now=NOW + 200, cache_read=0, cache_written=21_000,
                    written_1h=False, output_tokens=50)
    assert set(s.caches) == {OPUS, HAIKU} and s.model == HAIKU
    # Lapsed entries are dropped.
    s = state_after(s, HAIKU, now=NOW + 5000, cache_read=0, cache_written=0, written_1h=False,
                    output_tokens=50)
    assert s.caches == {}


def test_stripping_removes_only_the_named_signatures() -> None:
    body = {"model": OPUS, "thinking": {"type": "enabled", "budget_tokens": 1024}, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "a", "signature": "A"},
            {"type": "text", "text": "x"}]},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": [
            {"type": "redacted_thinking", "data": "B"}, {"type": "text", "text": "y"}]},
        {"role": "user", "content": "q3"},
    ]}
    out = json.loads(rewritten_body(json.dumps(body).encode(),
                                    frozenset({signature_hash("A")}), ("thinking",)))
    assert out["messages"][1]["content"] == [{"type": "text", "text": "x"}]
    assert out["messages"][3]["content"][0] == {"type": "redacted_thinking", "data": "B"}
    assert "thinking" not in out and out["model"] == OPUS


def test_effort_leaves_with_output_config_kept_for_the_rest() -> None:
    body = {"model": OPUS, "output_config": {"effort": "high", "format": {"type": "json"}},
            "messages": [{"role": "user", "content": "q"}]}
    out = json.loads(rewritten_body(json.dumps(body).encode(), frozenset(), ("effort",)))
    assert out["output_config"] == {"format": {"type": "json"}}
    alone = {"model": OPUS, "output_config": {"effort": "low"}, "messages": []}
    assert "output_config" not in json.loads(rewritten_body(json.dumps(alone).encode(),
                                                            frozenset(), ("effort",)))


def test_the_shipped_capabilities_agree_with_the_upstreams_catalogue() -> None:
    """router.yaml's `models:` says what each model serves; the fake serves the catalogue of
    the wire spec (GET /v1/models). A model listed in both must agree on every hard limit."""
    from router.fake.catalogue import CATALOGUE

    policy = shipped()
    compared = 0
    for spec in CATALOGUE:
        caps = policy.caps_of(spec.id)
        if caps is None:
            continue
        compared += 1
        assert (caps.context_window, caps.max_output_tokens) == (spec.context, spec.max_output), \
            spec.id
        assert set(caps.thinking) == set(spec.thinking) - {"disabled"}, spec.id
        assert set(caps.effort) == set(spec.effort), spec.id
        assert set(caps.aliases) == set(spec.aliases), spec.id
    assert compared >= 12


def test_a_conversation_that_stays_keeps_its_own_models_fallbacks() -> None:
    # On Sonnet with a large warm cache, the rules say Haiku: it stays on Sonnet, and if Sonnet
    # is overloaded it may fall back as Sonnet does (to Haiku), not as Haiku would.
    conv = conversation(history(), state(SONNET, cached=60_000, ttl=3600, expires_in=3000))
    d = decide(make_features(complexity="simple", requested_model=SONNET, input_tokens=60_200),
               shipped(), conversation=conv)
    assert (d.model, d.action) == (SONNET, "stay")
    assert d.fallbacks == (HAIKU,)
