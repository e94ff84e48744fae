"""router/accounting/account.py on its own: what one finished request adds to the books."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from router.accounting.account import Books, Record, account, log_fields, proxy_overhead
from router.accounting.cost import Tokens
from router.accounting.metrics import Metrics
from router.config_file import default_config_text
from router.routing.decide import Decision
from router.routing.factor import FactorLearner
from router.routing.rules import parse_policy
from router.upstream.forward import Outcome
from router.wire import CacheCreation, Usage

HAIKU = "claude-haiku-4-5"
OPUS = "claude-opus-4-7"
USAGE = Usage(input_tokens=1000, output_tokens=200, cache_read_input_tokens=10_000,
              cache_creation_input_tokens=2000,
              cache_creation=CacheCreation(ephemeral_5m_input_tokens=2000))
# Haiku's list prices: 1000 x $1 + 200 x $5 + 10k x $0.10 + 2000 x $1.25, per million.
HAIKU_COST = Decimal("0.0055")
OPUS_COST = Decimal("0.0275")


def make_books() -> Books:
    books = Books(Metrics(), FactorLearner(priors={HAIKU: 1.0}))
    books.configure(parse_policy(default_config_text()))
    return books


def record(outcome: Outcome | None = None, *, model: str = HAIKU, rule: str = "simple-to-haiku",
           requested: str | None = OPUS, status: int = 200, error_type: str | None = None,
           estimated: int | None = None) -> Record:
    decision = Decision(model, "haiku", rule, "test")
    return Record("req_1", "POST", "/v1/messages", status, decision, requested, outcome, 0.5,
                  started_at=10.0, error_type=error_type, estimated_tokens=estimated)


def answered(model: str = HAIKU, usage: Usage = USAGE, **fields: object) -> Outcome:
    values: dict[str, object] = {"status": 200, "model": model, "usage": usage, "attempts": 1,
                                 "first_sent_at": 10.1, "sent_at": 10.1,
                                 "upstream_seconds": 0.3, "first_token_seconds": 0.1}
    values.update(fields)
    return Outcome(**values)  # type: ignore[arg-type]


def value(books: Books, name: str, **labels: str) -> float:
    found = books.metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_an_answer_counts_tokens_cost_and_the_counterfactual() -> None:
    books = make_books()
    account(record(answered()), books)
    where = {"model": HAIKU, "tier": "haiku"}
    assert value(books, "router_requests_total", rule="simple-to-haiku", status="2xx",
                 **where) == 1
    where |= {"team": "other"}  # no team configured for the caller
    assert value(books, "router_tokens_total", type="input", **where) == 1000
    assert value(books, "router_tokens_total", type="cache_read", **where) == 10_000
    assert value(books, "router_tokens_total", type="cache_write_5m", **where) == 2000
    assert Decimal(str(value(books, "router_cost_usd_total", rule="simple-to-haiku",
                             **where))) == HAIKU_COST
    assert Decimal(str(value(books, "router_counterfactual_cost_usd_total",
                             requested_model=OPUS))) == OPUS_COST


def test_a_requested_tier_name_is_priced_as_its_model() -> None:
    books = make_books()
    account(record(answered(), requested="opus"), books)
    assert Decimal(str(value(books, "router_counterfactual_cost_usd_total",
                             requested_model=OPUS))) == OPUS_COST


def test_an_unpriced_model_is_cost_unknown_never_zero() -> None:
    books = make_books()
    account(record(answered(model="claude-made-up-9"), model="claude-made-up-9"), books)
    assert value(books, "router_unpriced_requests_total", model="other") == 1
    assert value(books, "router_cost_usd_total", model="other", tier="other",
                 rule="simple-to-haiku", team="other") == 0


def test_an_unpriced_requested_model_claims_no_savings() -> None:
    books = make_books()
    account(record(answered(), requested="claude-fable-5-2"), books)
    assert Decimal(str(value(books, "router_counterfactual_cost_usd_total",
                             requested_model="other"))) == HAIKU_COST


def test_retries_fallbacks_and_breakers_are_counted_with_bounded_labels() -> None:
    outcome = answered(retries=[(OPUS, "overloaded_error"), ("claude-x", "teapot")],
                       fallbacks=[(OPUS, HAIKU)], breaker_opened=[OPUS], attempts=3)
    books = make_books()
    account(record(outcome), books)
    assert value(books, "router_retries_total", model=OPUS, reason="overloaded_error") == 1
    assert value(books, "router_retries_total", model="other", reason="other") == 1
    assert value(books, "router_fallbacks_total", from_model=OPUS, to_model=HAIKU) == 1
    assert value(books, "router_circuit_opened_total", model=OPUS) == 1


@pytest.mark.parametrize(("rec", "status"), [
    (record(answered()), "2xx"),
    (record(None, status=400, error_type="invalid_request_error"), "invalid_request_error"),
    (record(answered(status=529, error_type="overloaded_error"), status=529),
     "overloaded_error"),
    (record(answered(client_disconnected=True)), "client_disconnected"),
    (record(answered(status=0), status=0), "client_disconnected"),
])
def test_the_status_label_says_how_the_request_ended(rec: Record, status: str) -> None:
    books = make_books()
    account(rec, books)
    assert value(books, "router_requests_total", tier="haiku", model=HAIKU,
                 rule="simple-to-haiku", status=status) == 1


def test_a_request_never_routed_is_rule_none() -> None:
    books = make_books()
    account(Record("req_2", "POST", "/v1/messages", 400, None, None, None, 0.01,
                   error_type="invalid_request_error"), books)
    assert value(books, "router_requests_total", tier="other", model="other", rule="none",
                 status="invalid_request_error") == 1


def test_the_learner_hears_the_reported_input_against_the_estimate() -> None:
    books = make_books()
    account(record(answered(), estimated=10_000), books)
    assert books.learner.observations(HAIKU) == 1
    # Input side: 1000 + 10k cache reads + 2000 cache writes over an estimate of 10k.
    assert value(books, "router_token_estimate_ratio_sum", model=HAIKU) == pytest.approx(1.3)


def test_proxy_overhead_excludes_the_upstream() -> None:
    outcome = answered(first_sent_at=10.01, sent_at=10.2, upstream_seconds=0.28)
    # 10 ms before the first attempt; the answer ended at 10.48, the request at 10.5.
    assert proxy_overhead(record(outcome), outcome) == pytest.approx(0.03)


def test_the_log_line_has_the_numbers_and_never_content(caplog: pytest.LogCaptureFixture
                                                        ) -> None:
    books = make_books()
    with caplog.at_level(logging.INFO, logger="router.access"):
        account(record(answered(upstream_request_id="req_up", attempts=2,
                                retries=[(HAIKU, "api_error")])), books)
    fields = caplog.records[-1].msg
    assert isinstance(fields, dict)
    assert fields["cost_usd"] == "0.0055"
    assert fields["retries"] == ["api_error"] and fields["attempts"] == 2
    assert fields["upstream_request_id"] == "req_up"
    assert (fields["input_tokens"], fields["cache_write_tokens"]) == (1000, 2000)
    assert set(fields).isdisjoint({"messages", "content", "system", "x-api-key"})


def test_the_log_line_of_an_unrouted_request_is_short() -> None:
    fields = log_fields(Record("req_3", "GET", "/v1/models", 200, None, None, None, 0.002),
                        Tokens(), None)
    assert fields == {"event": "request", "request_id": "req_3", "method": "GET",
                      "path": "/v1/models", "status": 200, "latency_ms": 2.0}
