"""Stage 4 of the pipeline: send the request upstream, retrying and falling back as the policy
allows, and relay the answer untouched.

One pooled aiohttp session per worker (:class:`Upstream`), created in the app's lifespan. JSON
answers come back byte for byte; SSE answers are relayed chunk by chunk as they arrive, never
buffered or re-encoded, while :class:`router.upstream.sse.StreamUsage` reads the usage on the
way past.

Retries and fallbacks happen only before the first byte of an answer reaches the client. After
that, a failure ends the stream with an Anthropic-shaped ``error`` event: never half an answer
dressed as a whole one.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
from multidict import CIMultiDict
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_any,
)
from tenacity.stop import stop_base
from yarl import URL

from router.body import with_model
from router.config import Config, Tier, UpstreamConfig
from router.errors import Overloaded, UpstreamTimeout, UpstreamUnavailable, error_event
from router.upstream.resilience import Breakers, backoff, retry_after, should_retry
from router.upstream.sse import StreamUsage
from router.wire import Usage, error_type_of_event, signatures_of_message, usage_of_message

Send = Callable[[dict[str, Any]], Awaitable[None]]
Pricer = Callable[[str, Usage], Decimal | None]
"""Prices usage on a model (for ``x-router-cost-usd``)."""

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the client library recomputes.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length", "accept-encoding", "expect"}
# aiohttp decompresses, and the server frames the body itself.
_NOT_RELAYED = _HOP_BY_HOP | {"content-length", "content-encoding"}


class Upstream:
    """The keep-alive connection pool to the upstream API, one per worker."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Create the session; call from the app's lifespan, inside the running loop."""
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections, ttl_dns_cache=300, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Off unless configured: proxies from the environment break TLS for many users.
            trust_env=self.config.trust_env,
            skip_auto_headers=("User-Agent", "Content-Type"),
            auto_decompress=True,
        )

    async def close(self) -> None:
        """Close the pool; call from the lifespan's exit."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def ready(self) -> bool:
        """Whether the pool is open."""
        return self._session is not None and not self._session.closed

    async def send(
        self,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: bytes | None,
        *,
        connect: float | None,
        first_byte: float | None,
        idle: float | None,
    ) -> aiohttp.ClientResponse:
        """Send one request and return the response once its status line arrived.

        Raises:
            UpstreamUnavailable: the upstream could not be reached or hung up.
            UpstreamTimeout: no answer within ``first_byte`` seconds (or no connection within
                ``connect``).
        """
        if self._session is None:
            raise UpstreamUnavailable("upstream client is not open")
        try:
            async with asyncio.timeout(first_byte):
                # encoded=True: the path is the client's, already encoded; not normalised.
                return await self._session.request(
                    method, URL(self.base_url + path_qs, encoded=True), data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect,
                                                  sock_read=idle),
                )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("upstream did not answer in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable(f"upstream unreachable: {type(exc).__name__}") from exc


def upstream_headers(raw: Iterable[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    """Return the client's headers to send upstream: all but hop-by-hop ones, as sent."""
    pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
    dropped = set(_NOT_FORWARDED)
    for name, value in pairs:
        if name.lower() == "connection":
            dropped.update(token.strip().lower() for token in value.split(","))
    out: CIMultiDict[str] = CIMultiDict(
        (name, value) for name, value in pairs if name.lower() not in dropped
    )
    # Uncompressed answers let the proxy read usage and relay SSE without re-encoding.
    out["Accept-Encoding"] = "identity"
    return out


def client_headers(
    response: aiohttp.ClientResponse, extra: Iterable[tuple[str, str]], *, stream: bool
) -> list[tuple[bytes, bytes]]:
    """Return the upstream's response headers to relay, plus ``extra`` (the x-router-* ones)."""
    out: list[tuple[bytes, bytes]] = []
    for name, value in response.raw_headers:
        lname = name.lower()
        if lname.decode("latin-1") in _NOT_RELAYED:
            continue
        if stream and lname == b"cache-control":
            continue
        out.append((lname, value))
    if stream:
        # Keep intermediaries (nginx, CDNs) from buffering or re-encoding the stream.
        out.append((b"cache-control", b"no-cache, no-transform"))
        out.append((b"x-accel-buffering", b"no"))
    out.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra)
    return out


@dataclass
class Outcome:
    """What happened upstream, for the account stage."""

    status: int = 0
    model: str | None = None
    """The model that answered (after any fallback)."""
    usage: Usage = field(default_factory=Usage)
    stream: bool = False
    error_type: str | None = None
    """The upstream's error type (HTTP error or mid-stream ``error`` event), or the proxy's."""
    upstream_request_id: str | None = None
    attempts: int = 0
    """Requests sent upstream, retries and fallbacks included."""
    retries: list[tuple[str | None, str]] = field(default_factory=list)
    """Each retry: the model and why (``overloaded_error``, ``connection``, ...)."""
    fallbacks: list[tuple[str, str]] = field(default_factory=list)
    """Each move to another model, as (from, to)."""
    breaker_opened: list[str] = field(default_factory=list)
    """Models whose circuit this request's failures opened."""
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


@dataclass(frozen=True, slots=True)
class Call:
    """One request to forward, with the models it may go to."""

    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes | None
    requested: str | None
    """The model named in ``body``; None for endpoints without a body."""
    models: tuple[str | None, ...]
    """The chosen model, then its fallbacks; ``(None,)`` when nothing is routed."""
    extra_headers: Callable[[str | None], list[tuple[str, str]]]
    """The x-router-* headers for an answer from a given model."""
    reporting: Reporting = field(default_factory=lambda: Reporting())
    """What to read from, and change in, a successful answer."""
    reroute: Reroute | None = None
    """Where to send the client's own request if the routed model refuses it (a 400)."""
    within: float | None = None
    """Seconds the whole call may take, when shorter than the configured total."""


@dataclass(frozen=True, slots=True)
class Reroute:
    """The client's request as it came, to send to the model it asked for when the model the
    router chose refuses it: a routing mistake must never become the client's error."""

    model: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Reporting:
    """What the relay reads from, and changes in, a successful answer."""

    model: str | None = None
    """The model name the answer reports instead of the one that answered (None: unchanged)."""
    signatures: bool = False
    """Collect the answer's thinking signatures into ``Outcome.signatures``."""
    answered: Callable[[Outcome], Awaitable[None]] | None = None
    """Called once a successful answer is known, before the client has all of it: state saved
    here is there for the client's next request, whichever worker or replica takes it."""


class _Failed(Exception):
    """A failed attempt: an error answer worth retrying, or a connection failure."""

    def __init__(self, reason: str, wait: float | None, *,
                 response: aiohttp.ClientResponse | None = None,
                 error: UpstreamUnavailable | UpstreamTimeout | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.wait = wait
        self.response = response
        self.error = error


async def forward(
    call: Call,
    upstream: Upstream,
    config: Config,
    tier_of: Callable[[str], Tier | None],
    breakers: Breakers,
    send: Send,
    outcome: Outcome,
    request_id: str,
    pricer: Pricer | None,
) -> None:
    """Send ``call`` upstream and relay the answer, retrying and falling back per the config.

    Raises:
        UpstreamUnavailable, UpstreamTimeout: every attempt failed without an answer to relay.
        Overloaded: every model's circuit is open.
    """
    primary = call.models[0]
    primary_tier = tier_of(primary) if primary else None
    total = _smallest(config.timeouts(primary_tier).total or None, call.within)
    deadline = time.monotonic() + total if total else None
    last: _Failed | None = None
    tried: str | None = None
    for model in call.models:
        if model is not None and not breakers.allows(model):
            tried = tried or model  # skipped with its circuit open: what we fall back from
            continue
        if tried is not None and model is not None and tried != model:
            outcome.fallbacks.append((tried, model))
        tried = model
        try:
            response, first = await _attempts(call, model, upstream, config,
                                              tier_of(model) if model else None, breakers,
                                              outcome, deadline)
        except _Failed as failed:
            if last is not None and last.response is not None:
                last.response.close()
            last = failed
            continue
        finally:
            if model is not None:
                breakers.settle(model)
        if last is not None and last.response is not None:
            last.response.close()
        if (call.reroute is not None and model is not None and model != call.reroute.model
                and response.status == 400
                and error_type_of_event(await _read_error(response)) == "invalid_request_error"):
            _let_go(response, reuse=True)
            outcome.rerouted_from = model
            own = Call(call.method, call.path_qs, call.headers, call.reroute.body,
                       call.reroute.model, (call.reroute.model,), call.extra_headers,
                       call.reporting)
            await forward(own, upstream, config, tier_of, breakers, send, outcome, request_id,
                          pricer)
            return
        extra = call.extra_headers(model)
        if outcome.fallbacks:
            extra.append(("x-router-fallback", "->".join(
                [outcome.fallbacks[0][0], *(to for _, to in outcome.fallbacks)])))
        price = None
        if pricer is not None and model is not None:
            price = _bound_pricer(pricer, model)
        outcome.model = model
        try:
            await relay(response, send, extra, outcome, request_id, price,
                        deadline=deadline, first=first, reporting=call.reporting)
        finally:
            _let_go(response, reuse=outcome.complete)
        return
    if last is None:
        wait = min(breakers.retry_in(m) for m in call.models if m is not None)
        raise Overloaded("every upstream model for this request is failing; retry later",
                         headers={"retry-after": str(max(1, round(wait)))})
    if last.response is not None:
        # Out of attempts with an upstream error in hand: the client gets it unchanged.
        outcome.model = tried
        try:
            await relay(last.response, send, call.extra_headers(tried), outcome, request_id,
                        None, deadline=deadline)
        finally:
            _let_go(last.response, reuse=outcome.complete)
        return
    assert last.error is not None
    raise last.error


def _bound_pricer(pricer: Pricer, model: str) -> Callable[[Usage], Decimal | None]:
    return lambda usage: pricer(model, usage)


async def _attempts(
    call: Call,
    model: str | None,
    upstream: Upstream,
    config: Config,
    tier: Tier | None,
    breakers: Breakers,
    outcome: Outcome,
    deadline: float | None,
) -> tuple[aiohttp.ClientResponse, bytes | None]:
    """Try one model until it answers, its attempts run out or the deadline nears.

    Returns the answer to relay (a success or an error not worth retrying), with the first
    chunk of a stream already read.

    Raises:
        _Failed: the last failure, when the model stayed overloaded or unreachable.
    """
    retry = config.retry(tier)
    timeouts = config.timeouts(tier)
    max_delay = retry.max_delay or 8.0
    body = call.body
    if body is not None and model is not None and call.requested is not None:
        body = with_model(body, call.requested, model)

    async def once() -> tuple[aiohttp.ClientResponse, bytes | None]:
        outcome.attempts += 1
        left = deadline - time.monotonic() if deadline is not None else None
        outcome.sent_at = time.perf_counter()
        outcome.first_sent_at = outcome.first_sent_at or outcome.sent_at
        try:
            response = await upstream.send(
                call.method, call.path_qs, call.headers, body, connect=timeouts.connect,
                first_byte=_smallest(timeouts.first_byte, left), idle=timeouts.idle,
            )
        except (UpstreamUnavailable, UpstreamTimeout) as exc:
            raise _failure(exc, breakers, model, outcome) from exc
        try:
            return await answered(response)
        except _Failed:
            raise  # it carries the response on, for a relay if no attempt does better
        except BaseException:
            # Cancelled (the client left) or broken: drop the connection so the upstream stops.
            response.close()
            raise

    async def answered(response: aiohttp.ClientResponse
                       ) -> tuple[aiohttp.ClientResponse, bytes | None]:
        """Check an answer: an error worth retrying raises; a good one is read far enough."""
        if response.status >= 400:
            error_body = await _read_error(response)
            if should_retry(response.status, response.headers, error_body):
                if response.status >= 500:
                    _count_failure(breakers, model, outcome)
                reason = error_type_of_event(error_body) if error_body else str(response.status)
                raise _Failed(reason, retry_after(response.headers), response=response)
            if model is not None and response.status < 500:
                breakers.succeeded(model)  # the model answered; the fault is the request's
            return response, None
        first = None
        if not _is_stream(response):
            # Nothing has gone to the client yet: a body cut off on the way is retried too.
            try:
                await response.read()  # kept by aiohttp for the relay
            except (TimeoutError, aiohttp.ClientError) as exc:
                response.close()
                error = _broken(exc, "upstream broke off its answer")
                raise _failure(error, breakers, model, outcome) from exc
        else:
            # A stream that breaks before its first event is retried like a refused connection.
            try:
                first = await _first_chunk(response, deadline)
            except (UpstreamUnavailable, UpstreamTimeout) as exc:
                response.close()
                raise _failure(exc, breakers, model, outcome) from exc
        if model is not None:
            breakers.succeeded(model)
        return response, first

    def delay(failed: _Failed, retries_so_far: int) -> float:
        return failed.wait if failed.wait is not None else backoff(retry, retries_so_far)

    def gives_up(failed: _Failed, retries_so_far: int) -> bool:
        if failed.wait is not None and failed.wait > max_delay:
            return True  # not worth waiting here: the fallback (or the client) takes over
        return deadline is not None and time.monotonic() + delay(failed, retries_so_far) >= deadline

    def note(failed: _Failed) -> None:
        outcome.retries.append((model, failed.reason))
        if failed.response is not None:
            failed.response.close()

    # The first attempt runs bare: the common case, a success, pays nothing for retry
    # machinery. Tenacity takes over from the first failure.
    try:
        return await once()
    except _Failed as failed:
        if (retry.attempts or 1) <= 1 or gives_up(failed, 0):
            raise
        note(failed)
        await asyncio.sleep(delay(failed, 0))

    def last_failure(state: RetryCallState) -> _Failed:
        failed = state.outcome.exception() if state.outcome else None
        assert isinstance(failed, _Failed)
        return failed

    retrying = AsyncRetrying(
        stop=stop_any(stop_after_attempt((retry.attempts or 1) - 1),
                      _StopWhen(lambda st: gives_up(last_failure(st), st.attempt_number))),
        wait=lambda st: delay(last_failure(st), st.attempt_number),
        retry=retry_if_exception_type(_Failed),
        before_sleep=lambda st: note(last_failure(st)),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await once()
    raise AssertionError("unreachable: tenacity returns or raises")  # pragma: no cover


def _failure(exc: UpstreamUnavailable | UpstreamTimeout, breakers: Breakers, model: str | None,
             outcome: Outcome) -> _Failed:
    """A connection failure or timeout, counted against the model's circuit."""
    _count_failure(breakers, model, outcome)
    reason = "timeout" if isinstance(exc, UpstreamTimeout) else "connection"
    return _Failed(reason, None, error=exc)


class _StopWhen(stop_base):
    """A tenacity stop condition from a plain predicate."""

    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.predicate(retry_state)


def _broken(exc: BaseException, message: str) -> UpstreamTimeout | UpstreamUnavailable:
    """The proxy's error for an answer that stopped: a timeout, or a lost connection."""
    return UpstreamTimeout(message) if isinstance(exc, TimeoutError) else UpstreamUnavailable(
        message)


def _smallest(*limits: float | None) -> float | None:
    """The tightest of some optional limits (None: no limit)."""
    given = [x for x in limits if x is not None]
    return min(given) if given else None


def _count_failure(breakers: Breakers, model: str | None, outcome: Outcome) -> None:
    if model is not None and breakers.failed(model):
        outcome.breaker_opened.append(model)


async def _read_error(response: aiohttp.ClientResponse) -> bytes:
    """Read an error answer's body (kept by aiohttp for a later relay); empty if it breaks."""
    try:
        return await response.read()
    except (TimeoutError, aiohttp.ClientError):
        return b""


def _let_go(response: aiohttp.ClientResponse, *, reuse: bool) -> None:
    """Return the connection to the pool, or drop it if the answer was not read to the end."""
    if reuse:
        response.release()
    else:
        response.close()


async def relay(
    response: aiohttp.ClientResponse,
    send: Send,
    extra_headers: Iterable[tuple[str, str]],
    outcome: Outcome,
    request_id: str,
    pricer: Callable[[Usage], Decimal | None] | None = None,
    *,
    deadline: float | None = None,
    first: bytes | None = None,
    reporting: Reporting | None = None,
) -> None:
    """Relay an upstream response to the ASGI client, filling ``outcome`` as it goes.

    ``pricer`` prices a non-streamed answer before its headers go out, for the
    ``x-router-cost-usd`` header. ``first`` is a stream's first chunk if the caller already
    read it.

    Raises:
        UpstreamUnavailable, UpstreamTimeout: the answer broke before any byte was sent.
    """
    started = outcome.sent_at
    outcome.status = response.status
    outcome.upstream_request_id = response.headers.get("request-id")
    outcome.stream = _is_stream(response)
    headers = client_headers(response, extra_headers, stream=outcome.stream)
    if not outcome.stream:
        try:
            body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _broken(exc, "upstream broke off its answer") from exc
        outcome.first_byte_seconds = time.perf_counter() - started
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
        return
    if first is None:
        first = await _first_chunk(response, deadline)
    await _relay_stream(response, first, send, headers, outcome, request_id, deadline,
                        reporting if response.status == 200 else None)


def _is_stream(response: aiohttp.ClientResponse) -> bool:
    content_type = response.headers.get("content-type", "")
    return response.status == 200 and content_type.startswith("text/event-stream")


async def _first_chunk(response: aiohttp.ClientResponse, deadline: float | None) -> bytes:
    """Read a stream's first chunk.

    Raises:
        UpstreamUnavailable, UpstreamTimeout: the stream broke or went silent first.
    """
    try:
        async with asyncio.timeout_at(_loop_deadline(deadline)):
            chunk: bytes = await response.content.readany()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _broken(exc, "upstream broke off before its first event") from exc
    if not chunk:
        raise UpstreamUnavailable("upstream ended the stream before its first event")
    return chunk


async def _relay_stream(
    response: aiohttp.ClientResponse,
    first: bytes,
    send: Send,
    headers: list[tuple[bytes, bytes]],
    outcome: Outcome,
    request_id: str,
    deadline: float | None,
    reporting: Reporting | None = None,
) -> None:
    started = outcome.sent_at
    tracker = StreamUsage(signatures=reporting is not None and reporting.signatures)
    chunks: AsyncIterator[bytes] = response.content.iter_any()
    if reporting is not None and reporting.model is not None:
        chunks = _reporting_model(first, chunks, reporting.model)
        first = await anext(chunks, b"")
    outcome.first_byte_seconds = time.perf_counter() - started
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    try:
        async with asyncio.timeout_at(_loop_deadline(deadline)):
            chunk = first
            while chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                tracker.feed(chunk)
                outcome.usage = tracker.usage
                chunk = await anext(chunks, b"")
    except (TimeoutError, aiohttp.ClientError) as exc:
        timed_out = isinstance(exc, TimeoutError)
        error_type = "timeout_error" if timed_out else "api_error"
        message = "upstream went silent mid-stream" if timed_out else "upstream connection lost"
        tracker.error_type = tracker.error_type or error_type
        event = error_event(error_type, message, request_id)
        await send({"type": "http.response.body", "body": event, "more_body": True})
    finally:
        outcome.usage = tracker.usage
        outcome.signatures = tracker.signatures
        outcome.error_type = tracker.error_type
        outcome.upstream_seconds = time.perf_counter() - started
        if tracker.first_content_at is not None:
            outcome.first_token_seconds = tracker.first_content_at - started
    if reporting is not None and reporting.answered is not None and tracker.error_type is None:
        await reporting.answered(outcome)
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    outcome.complete = tracker.error_type is None


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


async def _reporting_model(first: bytes, rest: AsyncIterator[bytes], model: str
                           ) -> AsyncIterator[bytes]:
    """Yield a stream whose ``message_start`` reports ``model``; every other byte unchanged."""
    held = first
    while b"\n\n" not in held.replace(b"\r\n", b"\n") and len(held) < _START_LIMIT:
        more = await anext(rest, b"")
        if not more:
            break
        held += more
    yield reported_as(held, model)
    async for chunk in rest:
        yield chunk


def _loop_deadline(deadline: float | None) -> float | None:
    """Convert a ``time.monotonic()`` deadline to the event loop's clock for asyncio.timeout."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


def usd_text(usd: Decimal) -> str:
    """Format a cost for a header: plain decimal, to a millionth of a cent."""
    return f"{usd.quantize(Decimal('1e-8')).normalize():f}"


def _error_type_of_body(body: bytes, status: int) -> str:
    """Return ``error.type`` of an upstream error body, or a name for the status if unreadable."""
    detail = error_type_of_event(body)
    if detail != "api_error" or b'"api_error"' in body:
        return detail
    return f"http_{status}"
