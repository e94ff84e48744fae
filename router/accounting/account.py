"""Stage 5 of the pipeline: what a request used and cost, written down exactly once.

Per request: Prometheus metrics (tokens by type, cost, the counterfactual cost on the requested
model, latency, errors), the token-estimate feedback, and one structured log line. Never
message content, never keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec

from router.accounting.cost import PriceTable, Tokens, tokens_of
from router.accounting.metrics import OTHER, Metrics
from router.routing.decide import Decision
from router.routing.factor import FactorLearner
from router.routing.rules import Policy
from router.upstream.relay import Outcome, usd_text

if TYPE_CHECKING:
    from router.accounting.ledger import Ledger
    from router.pipeline import Routed


class Record(msgspec.Struct, frozen=True):
    """One finished request as the account stage sees it (a Struct: built once per request,
    at a fifth of a frozen dataclass's cost)."""

    request_id: str
    method: str
    path: str
    status: int
    decision: Decision | None
    requested_model: str | None
    outcome: Outcome | None
    seconds: float
    started_at: float = 0.0
    """``perf_counter()`` when the request arrived."""
    error_type: str | None = None
    """The proxy's own error type (or ``client_disconnected``), if it answered itself."""
    estimated_tokens: int | None = None
    """The router's raw (unscaled) input-token estimate, to learn the model's factor from."""
    team: str = OTHER
    """The ``team`` label: the caller's configured team, else ``other``."""
    routed: Routed | None = None
    """Stages 2-3's outcome (features, conversation, decision), for the ledger."""
    caller: str | None = None
    """A non-reversible hash of the caller's credential (never the key)."""
    body: bytes | None = None
    """The request body, only when ``ledger.store_bodies`` asks for it."""


@dataclass
class Books:
    """What the account stage writes to, owned by the app's lifespan."""

    metrics: Metrics
    learner: FactorLearner
    prices: PriceTable = field(default_factory=lambda: PriceTable(None))
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("router.access"))
    requested_models: frozenset[str] = frozenset()
    """Model ids allowed as ``requested_model`` label values."""
    tier_models: dict[str, str] = field(default_factory=dict)
    """Tier name -> model id, to resolve a requested alias."""
    policy: Policy | None = None
    ledger: Ledger | None = None
    """The request ledger (and the shadow policy it feeds), when the app runs one."""

    def tier_of(self, model: str) -> str:
        """The tier label of a model that answered (a fallback's, say)."""
        tier = self.policy.tier_of(model) if self.policy is not None else None
        return tier or OTHER

    def configure(self, policy: Policy) -> None:
        """Adopt a (re)loaded policy: its prices and the label values it allows."""
        config = policy.config
        self.prices = PriceTable(config.pricing)
        models = {t.model for t in config.tiers.values()} | set(self.prices.models())
        models |= {r.model for r in policy.rules if r.model}
        self.requested_models = frozenset(models)
        self.tier_models = {name: tier.model for name, tier in config.tiers.items()}
        self.policy = policy
        shadow = policy.shadow.rules if policy.shadow else ()
        self.metrics.configure(
            models,
            [r.name for r in (*policy.rules, *shadow)],
            policy.loaded.sha256,
            policy.loaded.source,
            config.budgets.daily_usd,
            teams={*config.teams, *(key.team for key in config.keys.issued)},
        )
        if self.ledger is not None:
            self.ledger.configure(policy)


def status_label(record: Record) -> str:
    """The ``status`` label: the error type if the request failed, else the status class."""
    if record.error_type:
        return record.error_type
    outcome = record.outcome
    if outcome is not None and outcome.client_disconnected:
        return "client_disconnected"
    if outcome is not None and outcome.error_type:
        return outcome.error_type
    return f"{record.status // 100}xx" if record.status else "client_disconnected"


def account(record: Record, books: Books) -> Decimal | None:
    """Count the request in the metrics, learn from its usage and write its log line; return
    what the answer cost (None: nothing priced), which budgets settle with."""
    metrics = books.metrics
    decision = record.decision
    outcome = record.outcome
    answered_by = outcome.model if outcome is not None and outcome.model else None
    model = metrics.model_label(answered_by or (decision.model if decision else None))
    tier = books.tier_of(answered_by) if answered_by else (
        (decision.tier or OTHER) if decision else OTHER)
    rule = metrics.rule_label(decision.rule) if decision else "none"
    metrics.bound(metrics.requests, tier, model, rule, status_label(record)).inc()
    if decision is not None and record.path.endswith("/messages"):
        metrics.bound(metrics.conversations, decision.action).inc()
        if decision.strip:
            metrics.stripped.inc(len(decision.strip))

    if outcome is not None:
        _count_resilience(metrics, outcome)
    cost: Decimal | None = None
    counterfactual: Decimal | None = None
    tokens = Tokens()
    if outcome is not None and decision is not None:
        tokens = tokens_of(outcome.usage)
        cost, counterfactual = _count_usage(record, books, model, tier, rule, tokens)
        stream = "true" if outcome.stream else "false"
        metrics.bound(metrics.duration, model, stream).observe(record.seconds)
        wait = first_token_wait(record, outcome)
        if wait is not None:
            metrics.bound(metrics.ttft, model, stream).observe(wait)
        if outcome.error_type:
            metrics.bound(metrics.upstream_errors, model, outcome.error_type).inc()
        if outcome.status == 200 and record.estimated_tokens and tokens.input_side:
            books.learner.observe(answered_by or decision.model, record.estimated_tokens,
                                  tokens.input_side)
            metrics.bound(metrics.estimate_ratio, model).observe(
                tokens.input_side / record.estimated_tokens)
    if outcome is not None and outcome.first_sent_at:
        metrics.overhead.observe(proxy_overhead(record, outcome))
    if books.ledger is not None:
        books.ledger.append(record, cost, counterfactual)
    if books.logger.isEnabledFor(logging.INFO):
        books.logger.info(log_fields(record, tokens, cost))
    return cost


def first_token_wait(record: Record, outcome: Outcome) -> float | None:
    """Seconds from the request's arrival to the answer's first content (the whole body when
    not streamed), or None when no content came."""
    if outcome.first_token_seconds is None:
        return None
    return outcome.sent_at - record.started_at + outcome.first_token_seconds


def proxy_overhead(record: Record, outcome: Outcome) -> float:
    """Seconds spent in the proxy itself: before the first attempt went upstream, and after the
    answer's last byte arrived. Upstream time, retries and backoff are not the proxy's."""
    before = outcome.first_sent_at - record.started_at
    answered = outcome.sent_at + outcome.upstream_seconds
    after = record.started_at + record.seconds - answered
    return max(0.0, before) + max(0.0, after)


def _count_resilience(metrics: Metrics, outcome: Outcome) -> None:
    """Retries, fallbacks and breakers that opened while serving the request."""
    for model, reason in outcome.retries:
        labels = (metrics.model_label(model), metrics.reason_label(reason))
        metrics.bound(metrics.retries, *labels).inc()
    for source, target in outcome.fallbacks:
        labels = (metrics.model_label(source), metrics.model_label(target))
        metrics.bound(metrics.fallbacks, *labels).inc()
    for opened in outcome.breaker_opened:
        metrics.bound(metrics.circuit_opened, metrics.model_label(opened)).inc()
    if outcome.rerouted_from is not None:
        metrics.bound(metrics.rerouted, metrics.model_label(outcome.rerouted_from)).inc()


def _count_usage(record: Record, books: Books, model: str, tier: str, rule: str,
                 tokens: Tokens) -> tuple[Decimal | None, Decimal | None]:
    """Count tokens, cost and the counterfactual cost of one answer; return both costs."""
    if not tokens.input_side and not tokens.output:
        return None, None
    metrics = books.metrics
    assert record.decision is not None and record.outcome is not None
    for kind, count in (("input", tokens.input), ("output", tokens.output),
                        ("cache_read", tokens.cache_read),
                        ("cache_write_5m", tokens.cache_write_5m),
                        ("cache_write_1h", tokens.cache_write_1h)):
        if count:
            metrics.bound(metrics.tokens, model, tier, kind, record.team).inc(count)
    usage = record.outcome.usage
    answered_by = record.outcome.model or record.decision.model
    cost = record.outcome.cost_usd
    if cost is None:
        cost = books.prices.cost(answered_by, usage)
    if cost is None:
        metrics.bound(metrics.unpriced, model).inc()
        return None, None
    metrics.bound(metrics.cost, model, tier, rule, record.team).inc(float(cost))
    if record.requested_model is None:
        return cost, None
    requested = books.tier_models.get(record.requested_model, record.requested_model)
    would_be = books.prices.cost(requested, usage)
    label = requested if requested in books.requested_models else OTHER
    # With no price for the requested model, claim no savings: count what was spent.
    counterfactual = would_be if would_be is not None else cost
    metrics.bound(metrics.counterfactual, label).inc(float(counterfactual))
    return cost, counterfactual


def log_fields(record: Record, tokens: Tokens, cost: Decimal | None) -> dict[str, Any]:
    """Return the fields of the request's log line."""
    fields: dict[str, Any] = {
        "event": "request",
        "request_id": record.request_id,
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "latency_ms": round(record.seconds * 1000, 3),
    }
    outcome = record.outcome
    if record.decision is not None:
        fields["requested_model"] = record.requested_model
        fields["model"] = (outcome.model if outcome else None) or record.decision.model
        fields["tier"] = record.decision.tier or OTHER
        fields["rule"] = record.decision.rule
        fields["conversation"] = record.decision.action
        if record.decision.rule == "conversation" or record.decision.action in ("up", "down"):
            # Why a conversation stayed or moved: the arithmetic a platform engineer checks.
            fields["reason"] = record.decision.reason
    if outcome is not None:
        if outcome.attempts > 1:
            fields["attempts"] = outcome.attempts
            fields["retries"] = [reason for _, reason in outcome.retries]
        if outcome.fallbacks:
            fields["fallbacks"] = [f"{a}->{b}" for a, b in outcome.fallbacks]
        if outcome.budget_denied:
            fields["retry_budget_spent"] = True
        fields["upstream_request_id"] = outcome.upstream_request_id
        fields["stream"] = outcome.stream
        fields["upstream_ms"] = round(outcome.upstream_seconds * 1000, 3)
        if outcome.first_byte_seconds is not None:
            fields["first_byte_ms"] = round(outcome.first_byte_seconds * 1000, 3)
        fields["input_tokens"] = tokens.input
        fields["output_tokens"] = tokens.output
        fields["cache_read_tokens"] = tokens.cache_read
        fields["cache_write_tokens"] = tokens.cache_write_5m + tokens.cache_write_1h
        if cost is not None:
            fields["cost_usd"] = usd_text(cost)
        if outcome.client_disconnected:
            fields["client_disconnected"] = True
    if record.estimated_tokens is not None:
        fields["estimated_input_tokens"] = record.estimated_tokens
    error_type = record.error_type or (outcome.error_type if outcome else None)
    if error_type:
        fields["error_type"] = error_type
    return fields
