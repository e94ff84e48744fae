"""The request path: parse -> classify -> decide -> forward -> account.

Only this module knows the order of the stages. :func:`proxy` is the ASGI handler body shared by
the three proxied endpoints; stages 1-3 are pure and :func:`route` runs them for ``explain`` too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import Enum
from typing import TYPE_CHECKING, Any

import msgspec

from router.accounting.account import Books, Record, account
from router.accounting.metrics import Metrics
from router.answer_headers import routing_headers
from router.body import ClientGone, Receive, read_body
from router.budgets import BudgetExceeded, Budgets, Identity, Ticket, Unavailable
from router.catalogue import models_page
from router.config import Tier
from router.conversation_state import load_conversation, save_conversation
from router.errors import (
    MethodNotAllowed,
    Overloaded,
    RouterError,
    UpstreamTimeout,
    UpstreamUnavailable,
    error_response,
    new_request_id,
)
from router.parse import Parsed, header_map, parse_count_tokens, parse_messages, require_api_key
from router.routing.capabilities import Needs, needs_of
from router.routing.classify import classify
from router.routing.conversations import (
    Conversation,
    rewritten_body,
)
from router.routing.decide import Available, Decision, Watched, budget_bound, decide
from router.routing.factor import FactorLearner
from router.routing.features import Features
from router.routing.rules import Policy, Rule
from router.routing.task import TaskMemo
from router.routing.tokens import TokenCounter, TokenEstimate
from router.state import Store
from router.upstream.forward import Call, Reroute, forward
from router.upstream.relay import Outcome, Reporting, Send
from router.upstream.resilience import Breakers, Gate, RetryBudget, Shape

if TYPE_CHECKING:
    from router.upstream.pool import Upstream


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
    store: Store
    """Conversation state (and later budgets), shared by workers and replicas."""
    books: Books
    """The account stage: prices, metrics, the log."""
    breakers: Breakers
    budget: RetryBudget
    gate: Gate
    budgets: Budgets
    """Keys, budgets and rate limits."""
    background: set[asyncio.Future[None]] = field(default_factory=set)
    """Exact token counts running in threads (kept referenced until done)."""
    tasks: TaskMemo = field(default_factory=dict)
    """Task texts already read by the classifier (an agent loop repeats its task turn)."""

    @property
    def metrics(self) -> Metrics:
        """The app's metrics."""
        return self.books.metrics

    def available(self, model: str) -> bool:
        """Whether ``model`` takes requests now (its circuit is closed or due a probe)."""
        return self.breakers.available(model)


class Routed(msgspec.Struct, frozen=True):
    """The outcome of stages 2-3 for one request."""

    features: Features
    estimate: TokenEstimate
    decision: Decision
    conversation: Conversation | None
    """The conversation the request continues, as loaded from the store."""
    # What the ledger keeps for `router simulate` to decide the request again: its needs, the
    # models whose circuit was open, and the tier a budget near its limit capped it at.
    needs: Needs | None = None
    unavailable: tuple[str, ...] = ()
    budget_cap: Tier | None = None


MODELS_WITHIN = 2.5
"""Seconds the upstream gets to answer ``GET /v1/models`` before the proxy answers from its
config: Claude Code's model discovery gives up after 3 s."""

MAX_DEFERRED_COUNTS = 8
"""Exact counts waiting for a thread at once; past it a request skips its exact count (the
approximation stands) rather than queue without bound."""

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
    if estimate.deferred and len(background) < MAX_DEFERRED_COUNTS:
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
    conversation: Conversation | None = None,
    *,
    available: Available = lambda model: True,
    explain: bool = False,
    tasks: TaskMemo | None = None,
) -> Routed:
    """Stages 2-3: classify the request and decide its model. No I/O; ``tasks`` only saves
    reading a task text again."""
    config = policy.config
    requested = config.resolve_model(parsed.request.model)
    requested_tier = policy.tier_of(requested)
    prior = config.tiers[requested_tier].token_factor if requested_tier else 1.0
    features = classify(
        parsed, estimate,
        token_factor=learner.factor(requested, prior),
        requested_tier=requested_tier or "other",
        complexity=config.complexity,
        tasks=tasks,
    )
    needs = needs_of(features, parsed.request.thinking, parsed.headers.get("anthropic-beta", ""))
    checked = Watched(available)
    decision = decision_for(features, parsed, policy, conversation, available=checked,
                            explain=explain, needs=needs)
    return Routed(features, estimate, decision, conversation, needs, tuple(checked.down))


def decision_for(features: Features, parsed: Parsed, policy: Policy,
                 conversation: Conversation | None, *, available: Available,
                 explain: bool = False, bound: Rule | None = None,
                 needs: Needs | None = None) -> Decision:
    """Stage 3: the request's model, from its features (within ``bound``, when given)."""
    if needs is None:
        needs = needs_of(features, parsed.request.thinking,
                         parsed.headers.get("anthropic-beta", ""))
    return decide(features, policy, needs=needs, conversation=conversation,
                  available=available, explain=explain, bound=bound)


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
    identity: Identity | None = None
    ticket: Ticket | None = None
    kept_body: bytes | None = None
    state.metrics.in_flight.inc()
    try:
        state.gate.enter()
        admitted = True
        if scope["method"] != endpoint.method:
            raise MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}",
                                   allow=endpoint.method)
        headers = header_map(scope["headers"])
        require_api_key(headers)
        identity = state.budgets.identify(headers)
        body: bytes | None = None
        reroute: Reroute | None = None
        models: tuple[str | None, ...] = (None,)
        shape = Shape()
        if endpoint is not Endpoint.MODELS:
            server = policy.config.server

            def hold(size: int) -> None:
                nonlocal held
                state.gate.reserve(size)
                held += size

            body = await read_body(receive, headers.get("content-length"),
                                   server.max_body_bytes, hold=hold, timeout=server.body_timeout)
            parse = parse_messages if endpoint is Endpoint.MESSAGES else parse_count_tokens
            parsed = parse(body, headers)
            requested = parsed.request.model
            kept_body = body if policy.config.ledger.store_bodies else None
            estimate = await estimate_tokens(state.counter, parsed, state.background)
            conversation = await load_conversation(state.store, parsed)
            routed = route(parsed, estimate, policy, state.learner, conversation,
                           available=state.available, tasks=state.tasks)
            if endpoint is Endpoint.MESSAGES:
                routed, ticket = await _reserved(state, policy, identity, parsed, routed,
                                                 request_id)
            decision = routed.decision
            if endpoint is Endpoint.MESSAGES and decision.action != "passthrough" \
                    and decision.model != policy.config.resolve_model(requested):
                reroute = Reroute(requested, body)
            if decision.strip or decision.drop:
                body = rewritten_body(body, decision.strip, decision.drop)
            # count_tokens answers for one model: falling back would count for another.
            fallbacks = decision.fallbacks if endpoint is Endpoint.MESSAGES else ()
            models = (decision.model, *fallbacks)
            shape = _shape(routed.features)
        outcome = Outcome()
        listing = endpoint is Endpoint.MODELS and _path_qs(scope).partition("?")[0] in (
            "/v1/models", "/v1/models/")
        call = Call(
            method=scope["method"],
            path_qs=_path_qs(scope),
            headers=identity.upstream_headers(state.upstream.request_headers(scope["headers"])),
            body=body,
            requested=requested,
            models=models,
            extra_headers=routing_headers(routed.decision if routed else None, policy,
                                         ticket.headers if ticket else ()),
            reporting=_reporting(routed, requested, policy, endpoint, state.store),
            reroute=reroute,
            within=MODELS_WITHIN if listing else None,
            shape=shape,
        )
        try:
            await _forward_watching_client(state, policy, call, receive, exchange, outcome,
                                           request_id)
        except (UpstreamTimeout, UpstreamUnavailable):
            if not (listing and not exchange.started):
                raise
            # Claude Code gives a gateway 3 s for its model list: answer from the config.
            await _send_json(exchange, models_page(policy.config, scope.get(
                "query_string", b"").decode("latin-1")), request_id)
            outcome.status = 200
        status = outcome.status
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
            team=state.budgets.team_label(identity),
            routed=routed, caller=identity.name if identity else None, body=kept_body,
        )
        cost = account(record, state.books)
        if ticket is not None:
            await _settle(state, ticket, cost, outcome, request_id)


async def _reserved(state: RouterState, policy: Policy, identity: Identity, parsed: Parsed,
                    routed: Routed, request_id: str) -> tuple[Routed, Ticket | None]:
    """Reserve the request's worst case against its limits; as a budget nears its limit, route
    it again under the budget's cap.

    Raises:
        BudgetExceeded: a budget is spent or a rate limit reached.
        Overloaded: the store is unreachable and budgets fail closed.
    """
    metrics = state.metrics
    team = metrics.team_label(identity.team)
    decision = routed.decision
    # Priced on the dearest model that may answer: a fallback, or the requested model if the
    # routed one refuses the request.
    models = [decision.model, *decision.fallbacks, policy.config.resolve_model(
        parsed.request.model)]
    try:
        ticket = await state.budgets.reserve(
            identity, models, routed.features.input_tokens, parsed.max_tokens or 0, parsed.body,
            state.books.prices.cost, request_id)
    except BudgetExceeded as err:
        metrics.bound(metrics.budget_actions, team, err.action).inc()
        raise
    except Unavailable as err:
        metrics.bound(metrics.budget_actions, team, "unavailable").inc()
        raise Overloaded("budgets cannot be checked: the state store is unreachable and "
                         "state.on_redis_error is closed; retry shortly",
                         retry_after=policy.config.state.redis_retry_seconds) from err
    if ticket is None or ticket.cap is None:
        if ticket is not None and ticket.warning:
            metrics.bound(metrics.budget_actions, team, "warned").inc()
        return routed, ticket
    capped = decision_for(routed.features, parsed, policy, routed.conversation,
                          available=state.available, bound=budget_bound(ticket.cap, ticket.note))
    if capped.model == decision.model:
        metrics.bound(metrics.budget_actions, team, "warned").inc()
        return routed, ticket
    metrics.bound(metrics.budget_actions, team, "downgraded").inc()
    capped = msgspec.structs.replace(capped, rule="budget",
                                     reason=f"{capped.reason}; {ticket.note}")
    return msgspec.structs.replace(routed, decision=capped, budget_cap=ticket.cap), ticket


async def _settle(state: RouterState, ticket: Ticket, cost: Decimal | None,
                  outcome: Outcome | None, request_id: str) -> None:
    """Replace the request's reservation by what it cost; a failure here fails no request."""
    try:
        await state.budgets.settle(ticket, cost, outcome.usage if outcome else None)
    except Exception:
        logging.getLogger("router.pipeline").exception(
            {"event": "budget_settle_failed", "request_id": request_id})


def _path_qs(scope: dict[str, Any]) -> str:
    """The path and query as the client wrote them: percent-encoding untouched, so what reaches
    the upstream is what the client asked for and nothing else (no decoded ``%2F`` or ``%3F``)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1").partition("?")[0] if raw else str(scope["path"])
    query = scope.get("query_string", b"")
    return path + ("?" + query.decode("latin-1") if query else "")


def _reporting(routed: Routed | None, requested: str | None, policy: Policy,
               endpoint: Endpoint, store: Store) -> Reporting:
    """What the relay reads from and changes in the answer, and the conversation's save."""
    if routed is None or endpoint is not Endpoint.MESSAGES:
        return Reporting()
    report = policy.config.conversations.response_model == "requested"
    conversation = routed.conversation
    answered = None
    if conversation is not None:
        ttl = policy.config.conversations.memory_seconds
        estimate = routed.features.input_tokens

        async def answered(outcome: Outcome) -> None:
            # The model that answered signed any thinking in it, fallback or not.
            await save_conversation(store, conversation, outcome, ttl, estimate)

    return Reporting(
        model=requested if report and requested != routed.decision.model else None,
        signatures=conversation is not None,
        answered=answered,
    )


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
            call, state.upstream, config, policy.tier_of, state.breakers, state.budget,
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
        # Once the answer is complete the server wakes the watcher with a disconnect and it
        # ends by itself: cheaper than throwing a cancellation into it on every request.
        if not exchange.finished:
            watcher.cancel()


async def _send_json(send: Callable[[dict[str, Any]], Any], body: bytes, rid: str) -> None:
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), (b"request-id", rid.encode()),
               (b"x-router-source", b"config")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error(send: Callable[[dict[str, Any]], Any], err: RouterError, rid: str) -> None:
    rendered = error_response(err, rid)
    await send({"type": "http.response.start", "status": rendered.status,
                "headers": rendered.headers})
    await send({"type": "http.response.body", "body": rendered.body, "more_body": False})


def _shape(features: Features) -> Shape:
    """What the upstream waits are fitted to: size, streaming, and whether the model may go
    quiet mid-stream (thinking, or tools whose input the API may hold back)."""
    return Shape(features.input_tokens, features.max_tokens, features.stream,
                 features.thinking != "none" or features.tools > 0)
