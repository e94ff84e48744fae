"""Stage 4 of the pipeline: send the request upstream, retrying and falling back as the policy
and the worker's retry budget allow, then hand the answer to :mod:`router.upstream.relay`.

Retries and fallbacks happen only before the first byte of an answer reaches the client. A model
whose circuit is open is skipped for its fallback; when no model of the chain can take the
request, it still goes to the chosen model, once: the proxy never refuses on the upstream's
behalf. Every attempt after a request's first (a retry or a fallback) is paid from the
:class:`~router.upstream.resilience.RetryBudget`, so a persistent overload is not multiplied;
when the proxy has retried and gives up, it tells the client ``x-should-retry: false`` so that
the SDK does not multiply it either.

The pool (:mod:`router.upstream.pool`, over :mod:`router.upstream.http1`) does the I/O.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

import msgspec

from router.body import with_model
from router.config import Config, Tier
from router.errors import UpstreamTimeout, UpstreamUnavailable
from router.upstream.relay import Outcome, Reporting, Send, relay
from router.upstream.resilience import (
    Breakers,
    RetryBudget,
    Shape,
    Waits,
    backoff,
    earliest,
    model_failed,
    retry_after,
    should_retry,
    waits_for,
)
from router.wire import Usage, error_type_of_event

if TYPE_CHECKING:
    from router.upstream.pool import Upstream, UpstreamResponse

ModelPricer = Callable[[str, Usage], Decimal | None]
"""Prices usage on a model (for ``x-router-cost-usd``)."""


class Call(msgspec.Struct, frozen=True):
    """One request to forward, with the models it may go to (a Struct: one per request)."""

    method: str
    path_qs: str
    headers: list[tuple[bytes, bytes]]
    """What goes upstream, byte for byte (see ``Upstream.request_headers``)."""
    body: bytes | None
    requested: str | None
    """The model named in ``body``; None for endpoints without a body."""
    models: tuple[str | None, ...]
    """The chosen model, then its fallbacks; ``(None,)`` when nothing is routed."""
    extra_headers: Callable[[str | None], list[tuple[str, str]]]
    """The x-router-* headers for an answer from a given model."""
    reporting: Reporting = msgspec.field(default_factory=Reporting)
    """What to read from, and change in, a successful answer."""
    reroute: Reroute | None = None
    """Where to send the client's own request if the routed model refuses it (a 400)."""
    within: float | None = None
    """Seconds the whole call may take, when shorter than the configured total."""
    shape: Shape = msgspec.field(default_factory=Shape)
    """Size and kind of the request, which the waits are fitted to."""


@dataclass(frozen=True, slots=True)
class Reroute:
    """The client's request as it came, to send to the model it asked for when the model the
    router chose refuses it: a routing mistake must never become the client's error."""

    model: str
    body: bytes


class _Failed(Exception):
    """A failed attempt: an error answer worth retrying, a lost connection or a timeout."""

    def __init__(self, reason: str, *, failed: bool | None, wait: float | None = None,
                 response: UpstreamResponse | None = None,
                 error: UpstreamUnavailable | UpstreamTimeout | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.failed = failed
        """The breaker's verdict: the model is failing (True), or no verdict (None, a 429)."""
        self.wait = wait
        self.response = response
        self.error = error


@dataclass
class _Answer:
    model: str | None
    response: UpstreamResponse
    first: bytes | None
    waits: Waits


@dataclass
class _Run:
    """One request's way through its models."""

    call: Call
    upstream: Upstream
    config: Config
    tier_of: Callable[[str], Tier | None]
    breakers: Breakers
    budget: RetryBudget
    outcome: Outcome
    deadline: float | None
    """Event-loop time by which the whole request must be done."""
    attempts: int = 0
    """Attempts this run made (a reroute is a run of its own)."""
    last: _Failed | None = None
    """The latest failure, kept (with its response) to relay if no attempt does better."""
    stopped: bool = False
    """The retry budget ran out: no more attempts of any kind."""
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)

    def keep(self, failed: _Failed) -> None:
        if self.last is not None and self.last.response is not None \
                and self.last.response is not failed.response:
            self.last.response.finish(reuse=False)
        self.last = failed

    async def try_model(self, model: str | None, attempts: int, *, probe: bool,
                        judged: bool = False) -> _Answer | None:
        """Try one model until it answers, its attempts run out, a timeout moves the request
        on, or the budget is spent; record the request's verdict on the model's circuit, unless
        this request was ``judged`` there already (a circuit counts requests, not attempts)."""
        tier = self.tier_of(model) if model else None
        retry = self.config.retry(tier)
        waits = waits_for(self.config.timeouts(tier), self.call.shape)
        body = self.call.body
        if body is not None and model is not None and self.call.requested is not None:
            body = with_model(body, self.call.requested, model)
        verdict: bool | None = None
        try:
            for n in range(attempts):
                if self.attempts and not self.budget.spend():
                    self.outcome.budget_denied = self.stopped = True
                    return None
                try:
                    response, first = await self.once(body, waits)
                except _Failed as failed:
                    self.keep(failed)
                    verdict = failed.failed
                    if isinstance(failed.error, UpstreamTimeout) or n + 1 >= attempts:
                        return None  # a hung model is not waited on twice: fall back
                    if failed.wait is not None and failed.wait > (retry.max_delay or 8.0):
                        return None  # not worth waiting here: the fallback (or client) takes it
                    delay = failed.wait if failed.wait is not None else backoff(retry, n)
                    if self.deadline is not None and self.loop.time() + delay >= self.deadline:
                        return None
                    self.outcome.retries.append((model, failed.reason))
                    await asyncio.sleep(delay)
                    continue
                # The model answered: a success, or the request's own fault. A 429 says nothing
                # of the model, nor does a 5xx the upstream marks final (x-should-retry: false).
                verdict = False if response.status < 500 and response.status != 429 else None
                return _Answer(model, response, first, waits)
            return None
        finally:
            if model is not None and not judged:
                if verdict is not None:
                    if self.breakers.record(model, failed=verdict):
                        self.outcome.breaker_opened.append(model)
                elif probe:
                    self.breakers.release(model)

    async def once(self, body: bytes | None, waits: Waits
                   ) -> tuple[UpstreamResponse, bytes | None]:
        """One attempt: an answer worth relaying (with a stream's first chunk read), or
        :class:`_Failed`."""
        outcome = self.outcome
        outcome.attempts += 1
        self.attempts += 1
        outcome.sent_at = time.perf_counter()
        outcome.first_sent_at = outcome.first_sent_at or outcome.sent_at
        limit = earliest(self.deadline,
                          self.loop.time() + waits.first if waits.first is not None else None)
        call = self.call
        response: UpstreamResponse | None = None
        try:
            async with asyncio.timeout_at(limit):
                response = await self.upstream.send(call.method, call.path_qs, call.headers,
                                                    body, connect=waits.connect)
                first = await _answered(response)
        except TimeoutError as exc:
            if response is not None:
                response.finish(reuse=False)
            error = UpstreamTimeout("upstream did not answer in time")
            raise _Failed("timeout", failed=True, error=error) from exc
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            if response is not None:
                response.finish(reuse=False)
            reason = "timeout" if isinstance(exc, UpstreamTimeout) else "connection"
            raise _Failed(reason, failed=True, error=exc) from exc
        except _Failed:
            raise  # it carries the response on, for a relay if no attempt does better
        except BaseException:
            # Cancelled (the client left) or broken: drop the connection so the upstream stops.
            if response is not None:
                response.finish(reuse=False)
            raise
        return response, first


async def _answered(response: UpstreamResponse) -> bytes | None:
    """Check an answer: an error worth retrying raises :class:`_Failed`; a good one is read far
    enough to know it is good (a non-streamed body whole, a stream's first chunk)."""
    if response.status >= 400:
        try:
            error_body = await response.read()  # kept for a later relay
        except (UpstreamUnavailable, UpstreamTimeout):
            error_body = b""
        if should_retry(response.status, response.headers, error_body):
            reason = error_type_of_event(error_body) if error_body else str(response.status)
            raise _Failed(reason, failed=True if model_failed(response.status) else None,
                          wait=retry_after(response.headers), response=response)
        return None
    if not response.is_stream:
        # Nothing has gone to the client yet: a body cut off on the way is retried too.
        await response.read()
        return None
    first = await response.chunk()
    if not first:
        raise UpstreamUnavailable("upstream ended the stream before its first event")
    return first


async def forward(
    call: Call,
    upstream: Upstream,
    config: Config,
    tier_of: Callable[[str], Tier | None],
    breakers: Breakers,
    budget: RetryBudget,
    send: Send,
    outcome: Outcome,
    request_id: str,
    pricer: ModelPricer | None,
) -> None:
    """Send ``call`` upstream and relay the answer, retrying and falling back per the config.

    Raises:
        UpstreamUnavailable, UpstreamTimeout: every attempt failed without an answer to relay;
            ``should_retry`` is False when the proxy had retried.
    """
    loop = asyncio.get_running_loop()
    budget.earn()
    primary = call.models[0]
    total = earliest(config.timeouts(tier_of(primary) if primary else None).total or None,
                     call.within)
    run = _Run(call, upstream, config, tier_of, breakers, budget, outcome,
               loop.time() + total if total else None, loop=loop)
    answer: _Answer | None = None
    try:
        skipped: str | None = None  # passed over with its circuit open: what we fall back from
        tried: str | None = None
        for model in call.models:
            if model is not None and not breakers.allows(model):
                skipped = skipped or model
                continue
            came_from = tried or skipped
            if came_from is not None and model is not None and came_from != model:
                outcome.fallbacks.append((came_from, model))
            tried = model
            probe = model is not None and breakers.is_open(model)
            answer = await run.try_model(model, config.retry(tier_of(model) if model else None)
                                         .attempts or 1, probe=probe)
            if answer is not None or run.stopped:
                break
        if answer is None and not run.attempts:
            # Every circuit of the chain is open: the upstream may still serve it. One attempt.
            tried = primary
            answer = await run.try_model(primary, 1, probe=False)
        if answer is None and run.attempts == 1 and not run.stopped and run.last is not None \
                and isinstance(run.last.error, UpstreamTimeout) \
                and (config.retry(tier_of(tried) if tried else None).attempts or 1) > 1 \
                and (run.deadline is None or loop.time() < run.deadline):
            # One model, hung once, nowhere to fall back (pinned, bound by thinking, or the others'
            # circuits open), and retries allowed: one more wait here, then the client is told not
            # to retry. Left to the SDK, its two retries would each wait as long again, and a hung
            # request would outlast any deadline a client can live with.
            answer = await run.try_model(tried, 1, probe=False, judged=True)
        if answer is not None:
            if run.last is not None and run.last.response is not None:
                run.last.response.finish(reuse=False)
            if await _refused_by_routing(answer, call):
                answer.response.finish(reuse=True)
                assert call.reroute is not None and answer.model is not None
                outcome.rerouted_from = answer.model
                own = Call(call.method, call.path_qs, call.headers, call.reroute.body,
                           call.reroute.model, (call.reroute.model,), call.extra_headers,
                           call.reporting, shape=call.shape)
                await forward(own, upstream, config, tier_of, breakers, budget, send, outcome,
                              request_id, pricer)
                return
            await _relay_answer(answer, call, outcome, request_id, send, pricer, run.deadline)
            return
        gave_up = run.attempts > 1 and not outcome.budget_denied
        last = run.last
        assert last is not None
        if last.response is not None:
            # Out of attempts with an upstream error in hand: the client gets it, and is told not
            # to retry when the proxy already did.
            outcome.model = tried
            extra = call.extra_headers(tried)
            if gave_up:
                extra.append(("x-should-retry", "false"))
            try:
                await relay(last.response, send, extra, outcome, request_id, deadline=run.deadline)
            finally:
                last.response.finish(reuse=outcome.complete)
            return
        assert last.error is not None
        if gave_up or (outcome.budget_denied and isinstance(last.error, UpstreamTimeout)):
            # Retried and failed, or the budget forbade moving on from a hung model: a retry from
            # the client would only wait as long again. (With no other model to try, the proxy
            # made no choice, and the client's own retry is the retry.)
            last.error.should_retry = False
        raise last.error
    finally:
        # Whatever ends the request (a client that leaves mid-retry cancels it), no answer it
        # holds keeps its connection; answers already finished are not touched again.
        if run.last is not None and run.last.response is not None:
            run.last.response.finish(reuse=False)
        if answer is not None:
            answer.response.finish(reuse=False)


async def _refused_by_routing(answer: _Answer, call: Call) -> bool:
    """Whether the routed model refused the request (a 400) that the requested model may take."""
    if call.reroute is None or answer.model is None or answer.model == call.reroute.model \
            or answer.response.status != 400:
        return False
    try:
        body = await answer.response.read()  # already read: an error answer is kept
    except (UpstreamUnavailable, UpstreamTimeout):
        return False
    return error_type_of_event(body) == "invalid_request_error"


async def _relay_answer(answer: _Answer, call: Call, outcome: Outcome, request_id: str,
                        send: Send, pricer: ModelPricer | None, deadline: float | None) -> None:
    model = answer.model
    extra = call.extra_headers(model)
    if outcome.fallbacks:
        extra.append(("x-router-fallback", "->".join(
            [outcome.fallbacks[0][0], *(to for _, to in outcome.fallbacks)])))
    price = None
    if pricer is not None and model is not None:
        price = _bound_pricer(pricer, model)
    outcome.model = model
    try:
        await relay(answer.response, send, extra, outcome, request_id, price, waits=answer.waits,
                    deadline=deadline, first=answer.first, reporting=call.reporting)
    finally:
        answer.response.finish(reuse=outcome.complete)


def _bound_pricer(pricer: ModelPricer, model: str) -> Callable[[Usage], Decimal | None]:
    return lambda usage: pricer(model, usage)
