"""Cost arithmetic against hand-computed values, and its properties."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.accounting.cost import PriceTable, Tokens, tokens_of
from router.config_file import default_config_text
from router.routing.rules import parse_policy
from router.upstream.sse import StreamUsage
from router.wire import CacheCreation, ServerToolUse, Usage

POLICY = parse_policy(default_config_text())
PRICES = PriceTable(POLICY.config.pricing)

# input 1,000 / output 2,000 / cache read 3,000 / 5m write 4,000 / 1h write 5,000, priced by
# hand from ../shared/pricing.md: Σ tokens × USD-per-MTok / 1,000,000.
MIXED = Usage(input_tokens=1000, output_tokens=2000, cache_read_input_tokens=3000,
              cache_creation_input_tokens=9000, cache_creation=CacheCreation(4000, 5000))
BY_HAND = {
    # 1000×1 + 2000×5 + 3000×0.10 + 4000×1.25 + 5000×2 = 26,300 µ$
    "claude-haiku-4-5": "0.0263",
    "claude-haiku-4-5-20251001": "0.0263",
    # 1000×3 + 2000×15 + 3000×0.30 + 4000×3.75 + 5000×6 = 78,900 µ$
    "claude-sonnet-4-6": "0.0789",
    "claude-sonnet-4-5": "0.0789",
    "claude-sonnet-4-5-20250929": "0.0789",
    # 1000×5 + 2000×25 + 3000×0.50 + 4000×6.25 + 5000×10 = 131,500 µ$
    "claude-opus-4-7": "0.1315",
    "claude-opus-4-5": "0.1315",
    "claude-opus-4-5-20251101": "0.1315",
    "claude-opus-4-6": "0.1315",
    "claude-opus-4-8": "0.1315",
    "claude-opus-5": "0.1315",
    # 1000×4 + 2000×20 + 3000×0.20 + 4000×5 + 5000×8 = 104,600 µ$
    "claude-opus-5-5": "0.1046",
    # 1000×2 + 2000×10 + 3000×0.20 + 4000×2.50 + 5000×4 = 52,600 µ$
    "claude-sonnet-5": "0.0526",
    "claude-sonnet-5-5": "0.0526",
    # 1000×0.10 + 2000×0.50 + 3000×0.01 + 4000×0.125 + 5000×0.20 = 2,630 µ$
    "claude-haiku-5-5": "0.00263",
    # 1000×10 + 2000×50 + 3000×1 + 4000×12.50 + 5000×20 = 263,000 µ$
    "claude-fable-5": "0.263",
    "claude-mythos-5": "0.263",
    # cache read 0.25: 10,000 + 100,000 + 750 + 50,000 + 100,000 = 260,750 µ$
    "claude-fable-5-1": "0.26075",
    "claude-mythos-5-1": "0.26075",
    # 1000×15 + 2000×75 + 3000×1.50 + 4000×18.75 + 5000×30 = 394,500 µ$
    "claude-opus-4-1-20250805": "0.3945",
    "claude-opus-4-20250514": "0.3945",
}


def test_every_priced_model_has_a_hand_computed_case() -> None:
    assert set(BY_HAND) == set(PRICES.models())


@pytest.mark.parametrize(("model", "expected"), sorted(BY_HAND.items()))
def test_each_model_in_the_default_file(model: str, expected: str) -> None:
    assert PRICES.cost(model, MIXED) == Decimal(expected)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (Usage(input_tokens=1000), "0.003"),
        (Usage(output_tokens=1000), "0.015"),
        (Usage(cache_read_input_tokens=1000), "0.0003"),
        (Usage(cache_creation_input_tokens=1000, cache_creation=CacheCreation(1000, 0)),
         "0.00375"),
        (Usage(cache_creation_input_tokens=1000, cache_creation=CacheCreation(0, 1000)), "0.006"),
        # No TTL split reported: the default TTL, 5 minutes.
        (Usage(cache_creation_input_tokens=1000), "0.00375"),
        # pricing.md's worked example: 3,000 + 7,500 + 3,000 + 7,500 = 21,000 µ$.
        (Usage(input_tokens=1000, cache_creation_input_tokens=2000,
               cache_creation=CacheCreation(2000, 0), cache_read_input_tokens=10000,
               output_tokens=500), "0.021"),
        # Web search: $10 per 1,000 searches, on top of tokens.
        (Usage(input_tokens=1000, server_tool_use=ServerToolUse(web_search_requests=3)), "0.033"),
        # Data residency: us ×1.1 on Sonnet 4.6.
        (Usage(input_tokens=1000, inference_geo="us"), "0.0033"),
        (Usage(input_tokens=1000, inference_geo="global"), "0.003"),
        # Batch: half price.
        (Usage(input_tokens=1000, output_tokens=1000, service_tier="batch"), "0.009"),
    ],
)
def test_each_kind_of_token_on_sonnet(usage: Usage, expected: str) -> None:
    assert PRICES.cost("claude-sonnet-4-6", usage) == Decimal(expected)


def test_long_context_premium_reprices_the_whole_request() -> None:
    # Sonnet 4.5 over 200K input: 250,000×6 + 1,000×22.50 + 10,000×0.60 = 1,528,500 µ$.
    usage = Usage(input_tokens=250_000, output_tokens=1000, cache_read_input_tokens=10_000)
    assert PRICES.cost("claude-sonnet-4-5", usage) == Decimal("1.5285")
    # Sonnet 4.6 has no premium: 250,000×3 + 1,000×15 + 10,000×0.30 = 768,000 µ$.
    assert PRICES.cost("claude-sonnet-4-6", usage) == Decimal("0.768")


def test_geo_multiplier_only_for_models_that_opt_in() -> None:
    usage = Usage(input_tokens=1000, inference_geo="us")
    assert PRICES.cost("claude-haiku-4-5", usage) == Decimal("0.001")


def test_unpriced_model_is_unknown_not_zero() -> None:
    assert PRICES.cost("claude-fable-5-2", MIXED) is None
    assert "claude-fable-5-2" not in PRICES


def stream_usage(*events: tuple[str, str]) -> Usage:
    tracker = StreamUsage()
    tracker.feed(b"".join(f"event: {n}\ndata: {d}\n\n".encode() for n, d in events))
    return tracker.usage


START = ('message_start', '{"type":"message_start","message":{"usage":{"input_tokens":100,'
         '"cache_read_input_tokens":50,"output_tokens":1}}}')


def test_stream_usage_is_cumulative_not_added() -> None:
    usage = stream_usage(
        START,
        ("message_delta", '{"type":"message_delta","usage":{"output_tokens":30}}'),
        ("message_delta", '{"type":"message_delta","usage":{"output_tokens":80}}'),
    )
    assert tokens_of(usage) == Tokens(input=100, output=80, cache_read=50)
    # 100×3 + 80×15 + 50×0.30 = 1,515 µ$
    assert PRICES.cost("claude-sonnet-4-6", usage) == Decimal("0.001515")


def test_stream_cut_before_any_delta_bills_message_start() -> None:
    usage = stream_usage(START, ("content_block_start", '{"type":"content_block_start"}'))
    assert tokens_of(usage) == Tokens(input=100, output=1, cache_read=50)


def test_stream_usage_survives_any_chunking() -> None:
    raw = b"".join(f"event: {n}\ndata: {d}\n\n".encode() for n, d in (
        START, ("message_delta", '{"type":"message_delta","usage":{"output_tokens":7}}')))
    for size in (1, 2, 3, 7, 64):
        tracker = StreamUsage()
        for i in range(0, len(raw), size):
            tracker.feed(raw[i:i + size])
        assert tokens_of(tracker.usage) == Tokens(input=100, output=7, cache_read=50)


counts = st.integers(min_value=0, max_value=50_000)
token_sets = st.builds(Tokens, counts, counts, counts, counts, counts, st.integers(0, 20))
models = st.sampled_from(sorted(PRICES.models()))


def usage_of(t: Tokens) -> Usage:
    return Usage(input_tokens=t.input, output_tokens=t.output,
                 cache_read_input_tokens=t.cache_read,
                 cache_creation_input_tokens=t.cache_write_5m + t.cache_write_1h,
                 cache_creation=CacheCreation(t.cache_write_5m, t.cache_write_1h),
                 server_tool_use=ServerToolUse(web_search_requests=t.web_searches))


@given(models, token_sets, token_sets)
def test_cost_is_additive(model: str, a: Tokens, b: Tokens) -> None:
    # Below every long-context threshold (≤ 100K input-side tokens in total), exactly additive.
    ca, cb, cab = (PRICES.cost(model, usage_of(t)) for t in (a, b, a + b))
    assert ca is not None and cb is not None
    if (a + b).input_side <= 100_000:
        assert cab == ca + cb


@given(models, token_sets)
def test_cost_is_never_negative_and_zero_only_for_nothing(model: str, t: Tokens) -> None:
    cost = PRICES.cost(model, usage_of(t))
    assert cost is not None and cost >= 0
    assert (cost == 0) == (t == Tokens())
