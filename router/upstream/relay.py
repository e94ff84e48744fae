"""Relaying an upstream answer to the client, and :class:`Outcome`, what the account stage
learns of it.

JSON answers go out byte for byte; SSE answers are relayed chunk by chunk as they arrive, never
buffered or re-encoded, while :class:`~router.upstream.sse.StreamUsage` reads usage and progress
on the way past. Once a stream's first byte has gone out nothing can be retried, so a stream
that breaks, goes silent, or ends without ``message_stop`` is ended with an Anthropic-shaped
``error`` event: never half an answer dressed as a whole one.

This module imports no HTTP client (the account stage, and ``router explain``, import
:class:`Outcome`); the answer comes as a :class:`~router.upstream.pool.UpstreamResponse`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec

from router.errors import UpstreamTimeout, UpstreamUnavailable, error_event
from router.upstream.resilience import Waits, earliest
from router.upstream.sse import StreamUsage
from router.wire import Usage, error_type_of_event, signatures_of_message, usage_of_message

if TYPE_CHECKING:
    from router.upstream.pool import UpstreamResponse

Send = Callable[[dict[str, Any]], Awaitable[None]]
Pricer = Callable[[Usage], Decimal | None]
"""Prices the usage of an answer (for ``x-router-cost-usd``)."""

STREAM_CUT = "stream_cut"
"""Outcome error type of a stream the upstream broke off, or ended without ``message_stop``."""


@dataclass
class Outcome:
    """What happened upstream, for the account stage."""

    status: int = 0
    model: str | None = None
    """The model that answered (after any fallback)."""
    usage: Usage = field(default_factory=Usage)
    stream: bool = False
    error_type: str | None = None
    """The upstream's error type (HTTP error or mid-stream ``error`` event), ``stream_cut`` or
    ``timeout_error`` for a stream the proxy had to end, or the proxy's own."""
    upstream_request_id: str | None = None
    attempts: int = 0
    """Requests sent upstream, retries and fallbacks included."""
    retries: list[tuple[str | None, str]] = field(default_factory=list)
    """Each retry: the model and why (``overloaded_error``, ``connection``, ...)."""
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    """Each move to another model, as (from, to)."""
    breaker_opened: list[str] = field(default_factory=list)
    """Models whose circuit this request's failures opened."""
    budget_denied: bool = False
    """A retry or fallback was left out because the worker's retry budget was spent."""
    first_sent_at: float = 0.0
    """``perf_counter()`` when the first attempt went upstream."""
    sent_at: float = 0.0
    """``perf_counter()`` when the answering attempt went upstream."""
    upstream_seconds: float = 0.0
    """From sending the answering attempt to the end of the answer."""
    first_byte_seconds: float | None = None
    """From sending the answering attempt to the first byte of the answer's body."""
    first_token_seconds: float | None = None
    """From sending to the first content delta (the whole body if not streamed)."""
    cost_usd: Decimal | None = None
    """Cost of the answer when it was computed on the way (for ``x-router-cost-usd``)."""
    client_disconnected: bool = False
    complete: bool = False
    """The whole answer reached the client."""
    signatures: list[str] = field(default_factory=list)
    """The answer's thinking signatures, when the call asked for them."""
    rerouted_from: str | None = None
    """The routed model that refused the request (400) before it went to the requested one."""


class Reporting(msgspec.Struct, frozen=True):
    """What the relay reads from, and changes in, a successful answer."""

    model: str | None = None
    """The model name the answer reports instead of the one that answered (None: unchanged)."""
    signatures: bool = False
    """Collect the answer's thinking signatures into ``Outcome.signatures``."""
    answered: Callable[[Outcome], Awaitable[None]] | None = None
    """Called once a successful answer is known, before the client has all of it: state saved
    here is there for the client's next request, whichever worker or replica takes it."""


def usd_text(usd: Decimal) -> str:
    """Format a cost for a header: plain decimal, to a millionth of a cent."""
    return f"{usd.quantize(Decimal('1e-8')).normalize():f}"


async def relay(
    response: UpstreamResponse,
    send: Send,
    extra_headers: Iterable[tuple[str, str]],
    outcome: Outcome,
    request_id: str,
    pricer: Pricer | None = None,
    *,
    waits: Waits | None = None,
    deadline: float | None = None,
    first: bytes | None = None,
    reporting: Reporting | None = None,
) -> None:
    """Relay an upstream response to the ASGI client, filling ``outcome`` as it goes.

    ``pricer`` prices a non-streamed answer before its headers go out, for the
    ``x-router-cost-usd`` header. ``first`` is a stream's first chunk if the caller already
    read it. ``deadline`` (event-loop time) bounds the whole answer; ``waits`` bound the
    silences between a stream's events. ``reporting`` applies to a successful answer.

    Raises:
        UpstreamUnavailable, UpstreamTimeout: the answer broke before any byte was sent.
    """
    outcome.status = response.status
    outcome.upstream_request_id = response.header(b"request-id")
    outcome.stream = response.is_stream
    headers = response.relayed_headers(extra_headers, stream=outcome.stream)
    if response.status != 200:
        reporting = None
    if not outcome.stream:
        await _relay_json(response, send, headers, outcome, pricer, reporting)
        return
    if first is None:
        try:
            async with asyncio.timeout_at(deadline):
                first = await response.chunk()
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream did not send its first event in time") from exc
        if not first:
            raise UpstreamUnavailable("upstream ended the stream before its first event")
    if reporting is not None and reporting.model is not None:
        quiet = waits.quiet if waits is not None else None
        limit = earliest(deadline, asyncio.get_running_loop().time() + quiet if quiet else None)
        first = await _reported_start(first, response, reporting.model, limit)
    await _relay_stream(response, first, send, headers, outcome, request_id, waits, deadline,
                        reporting)


async def _relay_json(response: UpstreamResponse, send: Send, headers: list[tuple[bytes, bytes]],
                      outcome: Outcome, pricer: Pricer | None, reporting: Reporting | None
                      ) -> None:
    body = await response.read()
    outcome.first_byte_seconds = time.perf_counter() - outcome.sent_at
    outcome.upstream_seconds = outcome.first_token_seconds = outcome.first_byte_seconds
    if response.status == 200:
        outcome.usage = usage_of_message(body) or Usage()
        if reporting is not None:
            if reporting.signatures:
                outcome.signatures = signatures_of_message(body)
            if reporting.model is not None:
                body = reported_as(body, reporting.model)
            if reporting.answered is not None:
                await reporting.answered(outcome)
        if pricer is not None:
            outcome.cost_usd = pricer(outcome.usage)
            if outcome.cost_usd is not None:
                headers.append((b"x-router-cost-usd", usd_text(outcome.cost_usd).encode()))
    else:
        outcome.error_type = _error_type_of_body(body, response.status)
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
    outcome.complete = True


async def _relay_stream(
    response: UpstreamResponse,
    first: bytes,
    send: Send,
    headers: list[tuple[bytes, bytes]],
    outcome: Outcome,
    request_id: str,
    waits: Waits | None,
    deadline: float | None,
    reporting: Reporting | None,
) -> None:
    started = outcome.sent_at
    loop = asyncio.get_running_loop()
    tracker = StreamUsage(signatures=reporting is not None and reporting.signatures)
    idle = waits.idle if waits else None
    quiet = waits.quiet if waits else None
    outcome.first_byte_seconds = time.perf_counter() - started
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    ending: tuple[str, str] | None = None
    try:
        async with asyncio.timeout_at(None) as timer:
            limit = MovingLimit(timer, deadline)
            try:
                chunk = first
                while chunk:
                    # While the client takes the chunk only the whole-request deadline runs: a
                    # slow reader is not a silent upstream.
                    limit.move(deadline)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    tracker.feed(chunk)
                    wait = idle if tracker.writing else quiet
                    if wait is not None:
                        limit.move(earliest(deadline, loop.time() + wait))
                    chunk = await response.chunk()
            finally:
                limit.stop()
        tracker.close()
        if not tracker.ended:
            ending = ("api_error", "upstream ended the stream before message_stop")
    except TimeoutError:
        past_deadline = deadline is not None and loop.time() >= deadline
        ending = ("timeout_error", "the request ran past its deadline" if past_deadline
                  else "upstream went silent mid-stream")
    except (UpstreamUnavailable, UpstreamTimeout):
        ending = ("api_error", "upstream connection lost mid-stream")
    finally:
        outcome.usage = tracker.usage
        outcome.signatures = tracker.signatures
        outcome.error_type = tracker.error_type
        outcome.upstream_seconds = time.perf_counter() - started
        if tracker.first_content_at is not None:
            outcome.first_token_seconds = tracker.first_content_at - started
    if reporting is not None and reporting.answered is not None and ending is None \
            and tracker.error_type is None:
        await reporting.answered(outcome)
    if ending is not None:
        error_type, message = ending
        outcome.error_type = "timeout_error" if error_type == "timeout_error" else STREAM_CUT
        event = error_event(error_type, message, request_id)
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    outcome.complete = outcome.error_type is None


class MovingLimit:
    """The time limit of an ``asyncio.timeout`` that moves with every chunk of a stream, moved
    cheaply.

    ``Timeout.reschedule`` cancels a timer and schedules another, twice per chunk of every
    stream (5.8% of a streamed request's CPU). Here moving the limit later only records it; the
    one scheduled call, when it comes, expires the timeout if the limit has passed or schedules
    itself again for the limit as it now stands. Only a limit moved earlier is rescheduled.
    """

    __slots__ = ("_at", "_handle", "_loop", "_timer", "_when")

    def __init__(self, timer: asyncio.Timeout, when: float | None) -> None:
        self._timer = timer
        self._loop = asyncio.get_running_loop()
        self._when: float | None = None
        self._at = 0.0  # when the scheduled call runs
        self._handle: asyncio.TimerHandle | None = None
        self.move(when)

    def move(self, when: float | None) -> None:
        """Set the limit (event-loop time; None: none)."""
        self._when = when
        if when is not None and (self._handle is None or when < self._at):
            self._arm(when)

    def stop(self) -> None:
        """Cancel the scheduled call: the stream is over."""
        self._when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._at = when
        self._handle = self._loop.call_at(when, self._due)

    def _due(self) -> None:
        self._handle = None
        when = self._when
        if when is None:
            return
        if when > self._loop.time():
            self._arm(when)
        else:
            self._timer.reschedule(self._loop.time())  # expires it: TimeoutError, as before


_MODEL_VALUE = re.compile(rb'"model"\s*:\s*"([^"\\]*)"')
_START_LIMIT = 1 << 16
"""Bytes of a stream held back at most while looking for the end of ``message_start``."""


def reported_as(body: bytes, model: str) -> bytes:
    """Return a Message (or a ``message_start`` event) whose top-level ``model`` says ``model``.

    Only the first ``model`` key before any ``content`` is the message's own: one inside a tool
    input comes later. Anything else is left as it came.
    """
    found = _MODEL_VALUE.search(body)
    content = body.find(b'"content"')
    if found is None or (content != -1 and content < found.start()):
        return body
    start, end = found.span(1)
    return body[:start] + msgspec.json.encode(model)[1:-1] + body[end:]


async def _reported_start(first: bytes, response: UpstreamResponse, model: str,
                          limit: float | None) -> bytes:
    """The stream's first bytes, read on to the end of ``message_start`` (within ``limit``, in
    event-loop time), with that event reporting ``model``; every other byte unchanged."""
    held = first
    try:
        async with asyncio.timeout_at(limit):
            while b"\n\n" not in held.replace(b"\r\n", b"\n") and len(held) < _START_LIMIT:
                more = await response.chunk()
                if not more:
                    break
                held += more
    except TimeoutError as exc:
        raise UpstreamTimeout("upstream did not finish its first event in time") from exc
    return reported_as(held, model)


def _error_type_of_body(body: bytes, status: int) -> str:
    """Return ``error.type`` of an upstream error body, or a name for the status if unreadable."""
    detail = error_type_of_event(body)
    if detail != "api_error" or b'"api_error"' in body:
        return detail
    return f"http_{status}"
