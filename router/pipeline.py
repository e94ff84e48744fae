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
from enum import Enum
from typing import Any

import aiohttp

from router.account import Record, account
from router.body import ClientGone, Receive, read_body, with_model
from router.config import LoadedConfig
from router.decide import Decision, requested_decision
from router.errors import MethodNotAllowed, RouterError, error_body, new_request_id
from router.forward import Outcome, Send, Upstream, relay, upstream_headers
from router.parse import Parsed, header_map, parse_count_tokens, parse_messages, require_api_key


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

    loaded: LoadedConfig
    upstream: Upstream
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("router.access"))


def route(parsed: Parsed, loaded: LoadedConfig) -> Decision:
    """Stages 2-3: choose the model for a parsed request. Pure: no I/O, no clock."""
    return requested_decision(loaded.config, parsed.request.model)


def router_headers(decision: Decision) -> list[tuple[str, str]]:
    """Return the ``x-router-*`` headers every routed response carries."""
    return [
        ("x-router-model", decision.model),
        ("x-router-tier", decision.tier or "other"),
        ("x-router-rule", decision.rule),
    ]


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
    decision: Decision | None = None
    requested: str | None = None
    outcome: Outcome | None = None
    error_type: str | None = None
    status = 0
    try:
        if scope["method"] != endpoint.method:
            raise MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}")
        headers = header_map(scope["headers"])
        require_api_key(headers)
        body: bytes | None = None
        extra: list[tuple[str, str]] = []
        if endpoint is not Endpoint.MODELS:
            limit = state.loaded.config.server.max_body_bytes
            body = await read_body(receive, headers.get("content-length"), limit)
            parse = parse_messages if endpoint is Endpoint.MESSAGES else parse_count_tokens
            parsed = parse(body, headers)
            requested = parsed.request.model
            decision = route(parsed, state.loaded)
            body = with_model(body, requested, decision.model)
            extra = router_headers(decision)
        outcome = Outcome()
        await _forward_watching_client(
            state.upstream, scope, receive, exchange, body, extra, outcome, request_id
        )
        status = outcome.status
    except ClientGone:
        status = 499
        error_type = "client_disconnected"
    except RouterError as err:
        status = err.status_code
        error_type = err.error_type
        if not exchange.started:
            await _send_error(exchange, err, request_id)
    finally:
        record = Record(
            request_id=request_id,
            method=scope["method"],
            path=scope["path"],
            status=status,
            decision=decision,
            requested_model=requested,
            outcome=outcome,
            seconds=time.perf_counter() - t0,
            error_type=error_type,
        )
        account(record, state.logger)


async def _forward_watching_client(
    upstream: Upstream,
    scope: dict[str, Any],
    receive: Receive,
    exchange: _Exchange,
    body: bytes | None,
    extra: list[tuple[str, str]],
    outcome: Outcome,
    request_id: str,
) -> None:
    """Forward and relay, but stop at once (and stop the upstream) if the client goes away."""
    work = asyncio.ensure_future(
        _forward(upstream, scope, exchange, body, extra, outcome, request_id)
    )
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not work.done() and not exchange.finished:
        # The client left mid-request: cancelling closes the upstream connection, so the
        # API stops generating (and billing); the usage seen so far stays in `outcome`.
        work.cancel()
        outcome.client_disconnected = True
        await asyncio.gather(work, return_exceptions=True)
        if outcome.status == 0:
            outcome.status = 499
        return
    await work


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _forward(
    upstream: Upstream,
    scope: dict[str, Any],
    exchange: _Exchange,
    body: bytes | None,
    extra: list[tuple[str, str]],
    outcome: Outcome,
    request_id: str,
) -> None:
    query = scope.get("query_string", b"")
    path_qs = scope["path"] + ("?" + query.decode("latin-1") if query else "")
    sent_at = time.perf_counter()
    response = await upstream.send(
        scope["method"], path_qs, upstream_headers(scope["headers"]), body
    )
    try:
        await relay(response, exchange, extra, outcome, sent_at, request_id)
    finally:
        _let_go(response, reuse=outcome.complete)


def _let_go(response: aiohttp.ClientResponse, *, reuse: bool) -> None:
    """Return the connection to the pool, or drop it if the answer was not read to the end."""
    if reuse:
        response.release()
    else:
        response.close()


async def _send_error(send: Callable[[dict[str, Any]], Any], err: RouterError, rid: str) -> None:
    body = error_body(err.error_type, err.message, rid)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"request-id", rid.encode()),
    ]
    if err.status_code in (502, 504, 529):
        # The SDKs retry these anyway; say so explicitly for other clients.
        headers.append((b"x-should-retry", b"true"))
    headers.extend(
        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers.items()
    )
    await send({"type": "http.response.start", "status": err.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
