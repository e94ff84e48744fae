"""The ledger's record of one request (:class:`Entry`), and how it is built from the account
stage's :class:`~router.accounting.account.Record`.

Content-free: the features are counts, flags and names; the conversation is known by a hash.
Only ``ledger.store_bodies: true`` adds the request body. New fields go at the end, with a
default, so that older records still decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

import msgspec

from router.accounting.account import first_token_wait
from router.accounting.cost import Tokens, tokens_of
from router.accounting.metrics import OTHER
from router.routing.conversations import ConversationState
from router.routing.factor import FactorLearner
from router.routing.features import Features
from router.routing.scorer import default_scorer

if TYPE_CHECKING:
    from router.accounting.account import Record
    from router.pipeline import Routed
    from router.routing.rules import Policy

FORMAT = 1
"""The record format; a reader skips records of a newer one."""


class ConversationSeen(msgspec.Struct, frozen=True, omit_defaults=True):
    """A request's conversation as the router loaded it: its routing state, no content."""

    id: str
    state: ConversationState | None = None
    """What the store held: the current model, caches, turns."""
    tool_loop: bool = False
    signers: tuple[str | None, ...] = ()
    """The signer of each thinking signature in the history, oldest first (None: unknown)."""
    latest: int = 0
    """How many of the last ``signers`` belong to the latest assistant turn with thinking."""
    caching: bool = False
    """The request marked cache breakpoints."""
    now: float = 0.0
    """Wall-clock seconds when the state was read (cache expiries are compared with it)."""


class Entry(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """One request in the ledger."""

    v: int = FORMAT
    ts: float
    """Wall-clock seconds (Unix) when the request arrived."""
    request_id: str
    path: str
    status: int
    """The status the client got (499: it went away)."""
    error_type: str | None = None
    caller: str | None = None
    """A non-reversible hash of the caller's API key."""
    team: str | None = None
    requested_model: str | None = None
    # -- the decision (absent when the request never reached routing)
    rule: str | None = None
    tier: str | None = None
    model: str | None = None
    """The model the router chose."""
    action: str | None = None
    """What the conversation layer did: new, stay, up, down, tool-loop, ..."""
    reason: str | None = None
    planned_fallbacks: tuple[str, ...] = ()
    # -- what the router knew when it decided, to decide again (``router simulate``)
    features: Features | None = None
    thresholds: tuple[float, float] | None = None
    """The ``complexity`` thresholds the live config applied (simple below, complex from)."""
    thinking: str = "none"
    """``thinking.type`` as sent (``disabled`` included), for the capability check."""
    betas: tuple[str, ...] = ()
    unavailable: tuple[str, ...] = ()
    """Models whose circuit was open when the router asked."""
    budget_cap: str | None = None
    """The tier a budget near its limit capped the request at (``rule`` is then ``budget``)."""
    conversation: ConversationSeen | None = None
    estimated_tokens: int = 0
    """The raw (unscaled) input-token estimate."""
    factors: dict[str, float] = {}
    """Claude tokens per estimated token, by model, as learned when the request ended: how
    usage on one model translates to another."""
    # -- what happened
    answered_by: str | None = None
    """The model that answered (a fallback's, when one took over)."""
    upstream_request_id: str | None = None
    """The API's ``request-id`` of the answer (the one the client saw)."""
    attempts: int = 0
    retries: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
    """Each move to another model, as ``from->to``."""
    stream: bool = False
    signed: bool = False
    """The answer carried thinking signatures."""
    usage: Tokens = Tokens()
    """Tokens by the kinds they are priced by (``input`` is the uncached input)."""
    service_tier: str | None = None
    """As reported (``batch`` is billed at the batch discount)."""
    inference_geo: str | None = None
    """As reported (some models cost more in some geographies)."""
    cost_usd: str | None = None
    """Exact decimal text; absent when the model has no price or nothing was billed."""
    counterfactual_usd: str | None = None
    """What the same usage would have cost on the requested model."""
    latency_ms: float = 0.0
    first_token_ms: float | None = None
    body: str | None = None
    """The request body: only with ``ledger.store_bodies: true``."""

    @property
    def priced_model(self) -> str | None:
        """The model the answer was billed on."""
        return self.answered_by or self.model

    @property
    def cost(self) -> Decimal | None:
        """The recorded cost."""
        return Decimal(self.cost_usd) if self.cost_usd is not None else None


@dataclass(frozen=True, slots=True)
class Context:
    """What entries are built with that changes only when the config does."""

    thresholds: tuple[float, float]
    priors: dict[str, float]
    """Tier models and their configured token factors."""
    store_bodies: bool


def context_of(policy: Policy) -> Context:
    """The entry-building context of a live policy."""
    config = policy.config
    return Context(default_scorer().thresholds(config.complexity),
                   {t.model: t.token_factor for t in config.tiers.values()},
                   config.ledger.store_bodies)


def entry_of(record: Record, cost: Decimal | None, counterfactual: Decimal | None,
             ended_at: float, learner: FactorLearner, context: Context) -> Entry:
    """Build the ledger record of a finished request (``ended_at``: wall-clock seconds)."""
    outcome = record.outcome
    decision = record.decision
    routed = record.routed
    # Built with one call and no intermediate dicts: this runs for every request.
    answered = upstream = service_tier = geo = first_token = None
    usage, attempts = _NO_USAGE, 0
    retries: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
    stream = signed = False
    error_type = record.error_type
    if outcome is not None:
        answered = outcome.model
        reported = outcome.usage
        usage = tokens_of(reported)
        service_tier, geo = reported.service_tier, reported.inference_geo
        attempts, stream, signed = outcome.attempts, outcome.stream, bool(outcome.signatures)
        if outcome.retries:
            retries = tuple(reason for _, reason in outcome.retries)
        if outcome.fallbacks:
            fallbacks = tuple(f"{a}->{b}" for a, b in outcome.fallbacks)
        upstream = outcome.upstream_request_id
        error_type = error_type or outcome.error_type
        wait = first_token_wait(record, outcome)
        if wait is not None:
            first_token = round(wait * 1000, 3)
    features = thresholds = budget_cap = seen = None
    thinking, estimated = "none", 0
    betas: tuple[str, ...] = ()
    unavailable: tuple[str, ...] = ()
    factors: dict[str, float] = {}
    if routed is not None:
        needs = routed.needs
        if needs is not None:
            thinking, betas = needs.thinking, tuple(sorted(needs.betas)) if needs.betas else ()
        features, thresholds = routed.features, context.thresholds
        unavailable, budget_cap = routed.unavailable, routed.budget_cap
        seen, estimated = _seen(routed), routed.estimate.tokens
        priors = context.priors
        if answered and answered not in priors:
            priors = {**priors, answered: 1.0}
        factors = learner.factors(priors)
    return Entry(
        ts=ended_at - record.seconds,
        request_id=record.request_id,
        path=record.path,
        status=record.status,
        error_type=error_type,
        caller=record.caller,
        team=record.team if record.team != OTHER else None,
        requested_model=record.requested_model,
        rule=decision.rule if decision else None,
        tier=decision.tier if decision else None,
        model=decision.model if decision else None,
        action=decision.action if decision else None,
        reason=decision.reason if decision else None,
        planned_fallbacks=decision.fallbacks if decision else (),
        features=features,
        thresholds=thresholds,
        thinking=thinking,
        betas=betas,
        unavailable=unavailable,
        budget_cap=budget_cap,
        conversation=seen,
        estimated_tokens=estimated,
        factors=factors,
        answered_by=answered,
        upstream_request_id=upstream,
        attempts=attempts,
        retries=retries,
        fallbacks=fallbacks,
        stream=stream,
        signed=signed,
        usage=usage,
        service_tier=service_tier,
        inference_geo=geo,
        cost_usd=str(cost) if cost is not None else None,
        counterfactual_usd=str(counterfactual) if counterfactual is not None else None,
        latency_ms=round(record.seconds * 1000, 3),
        first_token_ms=first_token,
        body=(record.body.decode("utf-8", "replace")
              if record.body is not None and context.store_bodies else None),
    )


_NO_USAGE = Tokens()


def _seen(routed: Routed) -> ConversationSeen | None:
    conversation = routed.conversation
    if conversation is None:
        return None
    history = conversation.history
    owners = conversation.owners
    return ConversationSeen(
        id=conversation.id,
        state=conversation.state,
        tool_loop=history.in_tool_loop,
        signers=tuple(owners.get(h) for h in history.signatures),
        latest=len(history.latest),
        caching=conversation.caching,
        now=conversation.now,
    )
