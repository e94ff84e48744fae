"""The request path: parse -> classify -> decide -> forward -> account.

Only this module knows the order of the stages. :func:`proxy` is the ASGI handler body shared by
the three proxied endpoints; stages 1-3 are pure and :func:`route` runs them for ``explain`` too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from router.accounting.account import Books, Record, account
from router.accounting.metrics import Metrics
from router.body import ClientGone, Receive, read_body
from router.errors import MethodNotAllowed, RouterError, error_body, new_request_id
from router.parse import Parsed, header_map, parse_count_tokens, parse_messages, require_api_key
from router.routing.classify import classify
from router.routing.conversations import ConversationMemory, conversation_key
from router.routing.decide import Decision, decide
from router.routing.features import Features
from router.routing.rules import Policy
from router.routing.scorer import default_scorer
from router.routing.tokens import FactorLearner, TokenCounter, TokenEstimate
from router.upstream.forward import Call, Outcome, Send, Upstream, forward, upstream_headers
from router.upstream.resilience import Breakers, Gate


class Endpoint(Enum):
    """The proxied endpoints."""

    MESSAGES = "messages"
    COUNT_TOKENS = "count_tokens"
    MODELS = "models"

    @property
    def method(self) -> str:
        """The HTTP method the endpoint accepts."""
        return "GET" if self is Endpoint.MODELS else "POST"


@dataclass
class RouterState:
    """Everything one worker owns, built in the app's lifespan."""

    policy: Policy
    """The live rules; replaced whole on reload, so a request keeps the one it started with."""
    upstream: Upstream
    counter: TokenCounter
    learner: FactorLearner
    memory: ConversationMemory
    books: Books
    """The account stage: prices, metrics, the log."""
    breakers: Breakers
    gate: Gate
    background: set[asyncio.Future[None]] = field(default_factory=set)
    """Exact token counts running in threads (kept referenced until done)."""

    @property
    def metrics(self) -> Metrics:
        """The app's metrics."""
        return self.books.metrics


@dataclass(frozen=True, slots=True)
class Routed:
    """The outcome of stages 2-3 for one request."""

    features: Features
    estimate: TokenEstimate
    decision: Decision
    conversation: str | None
    """The conversation's memory key, when the decision must be remembered."""


DEFER_CHARS = 48_000
"""New text (about 12k tokens) up to which a request routes on the approximate count while the
exact one is made in a thread for the next turn: tokenizing it inline would cost the request
up to ~2 ms, for a number that moves no decision at that size."""


async def estimate_tokens(counter: TokenCounter, parsed: Parsed,
                          background: set[asyncio.Future[None]]) -> TokenEstimate:
    """Count the request's tokens without holding up the event loop.

    Cached history costs a lookup; a little new text is approximated now and counted exactly in
    a thread (kept in ``background`` until done); a lot of new text is counted in a thread
    before routing, since the size may then matter.
    """
    if counter.needs_thread(parsed.request):
        return await asyncio.to_thread(counter.estimate, parsed.request)
    estimate = counter.estimate(parsed.request, defer_up_to=DEFER_CHARS)
    if estimate.deferred:
        future = asyncio.get_running_loop().run_in_executor(None, counter.learn,
                                                            estimate.deferred)
        background.add(future)
        future.add_done_callback(background.discard)
    return estimate


def route(
    parsed: Parsed,
    estimate: TokenEstimate,
    policy: Policy,
    learner: FactorLearner,
    memory: ConversationMemory,
    *,
    explain: bool = False,
) -> Routed:
    """Stages 2-3: classify the request and decide its model. No I/O; reads the memory only."""
    config = policy.config
    requested = config.resolve_model(parsed.request.model)
    requested_tier = policy.tier_of(requested)
    prior = config.tiers[requested_tier].token_factor if requested_tier else 1.0
    features = classify(
        parsed, estimate,
        token_factor=learner.factor(requested, prior),
        requested_tier=requested_tier or "other",
        complexity=config.complexity,
    )
    conversation = None
    if features.history_thinking or features.thinking != "none":
        conversation = conversation_key(parsed.request.messages, features.session_id)
    sticky = memory.model_for(conversation) if conversation and features.history_thinking else None
    decision = decide(features, policy, sticky_model=sticky, explain=explain)
    return Routed(features, estimate, decision, conversation)


async def explain(body: bytes, headers: dict[str, str], state: RouterState) -> dict[str, Any]:
    """Stages 1-3 with every rule traced, for ``POST /v1/router/explain``: nothing goes upstream.

    Raises:
        InvalidRequest: the body is not a valid Messages request.
    """
    parsed = parse_messages(body, headers)
    estimate = await estimate_tokens(state.counter, parsed, state.background)
    routed = route(parsed, estimate, state.policy, state.learner, state.memory, explain=True)
    return explanation(routed, state.policy)


def explanation(routed: Routed, policy: Policy) -> dict[str, Any]:
    """Return the report ``explain`` shows: decision, rules tried, features, token estimate."""
    decision = routed.decision
    return {
        "decision": {
            "model": decision.model,
            "tier": decision.tier or "other",
            "rule": decision.rule,
            "reason": decision.reason,
            "requested_model": routed.features.requested_model,
        },
        "rules": [
            {"rule": t.rule, "matched": t.matched, "when": t.condition, "effect": t.effect}
            for t in decision.trace
        ],
        "features": dataclasses.asdict(routed.features),
        "complexity": complexity_explanation(routed.features, policy),
        "estimate": dataclasses.asdict(routed.estimate),
        "config": {"source": policy.loaded.source, "sha256": policy.loaded.sha256},
    }


def complexity_explanation(features: Features, policy: Policy) -> dict[str, Any]:
    """Return how ``complexity_score`` was reached: the model's base, what each feature added,
    and the thresholds that made it a level."""
    scorer = default_scorer()
    simple_below, complex_from = scorer.thresholds(policy.config.complexity)
    return {
        "score": features.complexity_score,
        "level": features.complexity,
        "simple_below": simple_below,
        "complex_from": complex_from,
        "base": round(scorer.intercept, 2),
        "contributions": [
            {"term": c.term, "value": c.value, "points": round(c.points, 2)}
            for c in scorer.contributions(features)
        ],
    }


@dataclass
class _Exchange:
    """Mutable bookkeeping of one request, read by the account stage at the end."""

    send: Send
    started: bool = False
    finished: bool = False

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif not message.get("more_body", False):
            self.finished = True
        await self.send(message)


async def proxy(
    state: RouterState, endpoint: Endpoint, scope: dict[str, Any], receive: Receive, send: Send
) -> None:
    """Serve one proxied request end to end, and account for it whatever happens."""
    t0 = time.perf_counter()
    request_id = new_request_id()
    exchange = _Exchange(send)
    policy = state.policy  # one policy for the whole request, even if a reload lands meanwhile
    routed: Routed | None = None
    requested: str | None = None
    outcome: Outcome | None = None
    error_type: str | None = None
    status = 0
    held = 0
    admitted = False
    state.metrics.in_flight.inc()
    try:
        state.gate.enter()
        admitted = True
        if scope["method"] != endpoint.method:
            raise MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}")
        headers = header_map(scope["headers"])
        require_api_key(headers)
        body: bytes | None = None
        models: tuple[str | None, ...] = (None,)
        if endpoint is not Endpoint.MODELS:
            limit = policy.config.server.max_body_bytes
            declared = headers.get("content-length", "")
            expected = min(int(declared), limit) if declared.isdigit() else 0
            state.gate.reserve(expected)
            held = expected
            body = await read_body(receive, declared or None, limit)
            state.gate.reserve(len(body) - held)
            held = len(body)
            parse = parse_messages if endpoint is Endpoint.MESSAGES else parse_count_tokens
            parsed = parse(body, headers)
            requested = parsed.request.model
            estimate = await estimate_tokens(state.counter, parsed, state.background)
            routed = route(parsed, estimate, policy, state.learner, state.memory)
            decision = routed.decision
            # count_tokens answers for one model: falling back would count for another.
            fallbacks = decision.fallbacks if endpoint is Endpoint.MESSAGES else ()
            models = (decision.model, *fallbacks)
        outcome = Outcome()
        call = Call(
            method=scope["method"],
            path_qs=_path_qs(scope),
            headers=upstream_headers(scope["headers"]),
            body=body,
            requested=requested,
            models=models,
            extra_headers=_extra_headers(routed.decision if routed else None, policy),
        )
        await _forward_watching_client(state, policy, call, receive, exchange, outcome,
                                       request_id)
        status = outcome.status
        if routed is not None and routed.conversation is not None and status == 200 \
                and endpoint is Endpoint.MESSAGES and outcome.model is not None:
            # The model that answered signed any thinking in it, fallback or not.
            state.memory.remember(routed.conversation, outcome.model)
    except ClientGone:
        status = 499
        error_type = "client_disconnected"
    except RouterError as err:
        status = err.status_code
        error_type = err.error_type
        if not exchange.started:
            await _send_error(exchange, err, request_id)
    except Exception:
        # A bug of ours: logged with its traceback, answered as a retryable 500 that says
        # nothing of it (and never echoes the request).
        logging.getLogger("router.pipeline").exception(
            {"event": "internal_error", "request_id": request_id, "path": scope["path"]})
        status = 500
        error_type = "api_error"
        if not exchange.started:
            await _send_error(exchange, RouterError("internal error in the routing proxy"),
                              request_id)
    finally:
        state.gate.release(held)
        if admitted:
            state.gate.leave()
        state.metrics.in_flight.dec()
        record = Record(
            request_id=request_id,
            method=scope["method"],
            path=scope["path"],
            status=status,
            decision=routed.decision if routed else None,
            requested_model=requested,
            outcome=outcome,
            seconds=time.perf_counter() - t0,
            started_at=t0,
            error_type=error_type,
            # Only exact estimates teach the token factor: approximations would skew it.
            estimated_tokens=routed.estimate.tokens if routed and routed.estimate.exact
            else None,
        )
        account(record, state.books)


def _path_qs(scope: dict[str, Any]) -> str:
    """The path and query as the client wrote them: percent-encoding untouched, so what reaches
    the upstream is what the client asked for and nothing else (no decoded ``%2F`` or ``%3F``)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1").partition("?")[0] if raw else str(scope["path"])
    query = scope.get("query_string", b"")
    return path + ("?" + query.decode("latin-1") if query else "")


def _extra_headers(decision: Decision | None, policy: Policy
                   ) -> Callable[[str | None], list[tuple[str, str]]]:
    """Return a function giving the ``x-router-*`` headers every routed answer carries, for an
    answer from a given model (the decision's, or a fallback's)."""
    if decision is None:
        return lambda model: []

    def headers(model: str | None) -> list[tuple[str, str]]:
        tier = decision.tier if model is None or model == decision.model else policy.tier_of(model)
        return [("x-router-model", model or decision.model), ("x-router-tier", tier or "other"),
                ("x-router-rule", decision.rule)]

    return headers


async def _forward_watching_client(
    state: RouterState,
    policy: Policy,
    call: Call,
    receive: Receive,
    exchange: _Exchange,
    outcome: Outcome,
    request_id: str,
) -> None:
    """Forward and relay, but stop at once (and stop the upstream) if the client goes away.

    One watcher task, which cancels this one on disconnect: cheaper on the hot path than
    running the forwarding in a task of its own and waiting on both.
    """
    config = policy.config
    this = asyncio.current_task()
    assert this is not None
    left = False

    async def watch() -> None:
        nonlocal left
        while (await receive())["type"] != "http.disconnect":
            pass
        if not exchange.finished:
            left = True
            this.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        await forward(
            call, state.upstream, config, policy.tier_of, state.breakers,
            exchange, outcome, request_id, state.books.prices.cost,
        )
    except asyncio.CancelledError:
        if not left:
            raise
        # The client left mid-request: cancelling closed the upstream connection, so the API
        # stops generating (and billing); the usage seen so far stays in `outcome`.
        this.uncancel()
        outcome.client_disconnected = True
        if outcome.status == 0:
            outcome.status = 499
    finally:
        watcher.cancel()


async def _send_error(send: Callable[[dict[str, Any]], Any], err: RouterError, rid: str) -> None:
    body = error_body(err.error_type, err.message, rid)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"request-id", rid.encode()),
    ]
    if err.status_code in (500, 502, 504, 529):
        # The SDKs retry these anyway; say so explicitly for other clients.
        headers.append((b"x-should-retry", b"true"))
    headers.extend(
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()
    )
    await send({"type": "http.response.start", "status": err.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
