"""Stage 5 of the pipeline: what a request used and cost, written down once.

One structured log line per request: ids, model, tier, rule, status, latency and tokens. Never
message content, never keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from router.decide import Decision
from router.forward import Outcome
from router.tokens import FactorLearner


@dataclass(frozen=True, slots=True)
class Record:
    """One finished request as the account stage sees it."""

    request_id: str
    method: str
    path: str
    status: int
    decision: Decision | None
    requested_model: str | None
    outcome: Outcome | None
    seconds: float
    error_type: str | None = None
    estimated_tokens: int | None = None
    """The router's raw (unscaled) input-token estimate, to learn the model's factor from."""


def log_fields(record: Record) -> dict[str, Any]:
    """Return the fields of the request's log line."""
    fields: dict[str, Any] = {
        "event": "request",
        "request_id": record.request_id,
        "method": record.method,
        "path": record.path,
        "status": record.status,
        "latency_ms": round(record.seconds * 1000, 3),
    }
    if record.decision is not None:
        fields["requested_model"] = record.requested_model
        fields["model"] = record.decision.model
        fields["tier"] = record.decision.tier or "other"
        fields["rule"] = record.decision.rule
    outcome = record.outcome
    if outcome is not None:
        fields["upstream_request_id"] = outcome.upstream_request_id
        fields["stream"] = outcome.stream
        fields["upstream_ms"] = round(outcome.upstream_seconds * 1000, 3)
        if outcome.first_byte_seconds is not None:
            fields["first_byte_ms"] = round(outcome.first_byte_seconds * 1000, 3)
        usage = outcome.usage
        fields["input_tokens"] = usage.input_tokens
        fields["output_tokens"] = usage.output_tokens
        fields["cache_read_tokens"] = usage.cache_read_input_tokens
        fields["cache_write_tokens"] = usage.cache_creation_input_tokens
        if record.estimated_tokens is not None:
            fields["estimated_input_tokens"] = record.estimated_tokens
        if outcome.client_disconnected:
            fields["client_disconnected"] = True
    error_type = record.error_type or (outcome.error_type if outcome else None)
    if error_type:
        fields["error_type"] = error_type
    return fields


def actual_input_tokens(outcome: Outcome) -> int:
    """All input tokens the upstream reported: uncached, cache writes and cache reads."""
    usage = outcome.usage
    return (usage.input_tokens or 0) + (usage.cache_creation_input_tokens or 0) + (
        usage.cache_read_input_tokens or 0
    )


def account(record: Record, logger: logging.Logger, learner: FactorLearner) -> None:
    """Learn from the reported usage, and write the request's log line."""
    outcome = record.outcome
    if (outcome is not None and record.decision is not None and outcome.status == 200
            and record.estimated_tokens):
        learner.observe(record.decision.model, record.estimated_tokens,
                        actual_input_tokens(outcome))
    if logger.isEnabledFor(logging.INFO):
        logger.info(log_fields(record))
