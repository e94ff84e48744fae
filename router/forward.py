"""Stage 4 of the pipeline: send the request upstream and relay the answer untouched.

One pooled aiohttp session per worker (:class:`Upstream`), created in the app's lifespan. JSON
answers come back byte for byte; SSE answers are relayed chunk by chunk as they arrive, never
buffered or re-encoded, while :class:`StreamUsage` reads the usage on the way past.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
from multidict import CIMultiDict

from router.config import UpstreamConfig
from router.errors import UpstreamTimeout, UpstreamUnavailable, error_event
from router.wire import Usage, error_type_of_event, usage_of_event, usage_of_message

Send = Callable[[dict[str, Any]], Awaitable[None]]

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
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self.config.connect_timeout,
                sock_read=self.config.read_timeout,
            ),
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
        self, method: str, path_qs: str, headers: CIMultiDict[str], body: bytes | None
    ) -> aiohttp.ClientResponse:
        """Send one request and return the response once its headers arrived.

        Raises:
            UpstreamUnavailable: the upstream could not be reached or hung up.
            UpstreamTimeout: the upstream did not answer within the configured timeouts.
        """
        if self._session is None:
            raise UpstreamUnavailable("upstream client is not open")
        try:
            return await self._session.request(
                method, self.base_url + path_qs, data=body, headers=headers,
                allow_redirects=False,
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


class StreamUsage:
    """Reads usage and errors from an SSE byte stream as it passes, without altering it."""

    __slots__ = ("_buffer", "error_type", "events", "first_content_at", "usage")

    def __init__(self) -> None:
        self._buffer = b""
        self.usage = Usage()
        self.error_type: str | None = None
        self.events = 0
        self.first_content_at: float | None = None
        """``perf_counter()`` when the first content delta passed: time to first token."""

    def feed(self, chunk: bytes) -> None:
        """Consume the next chunk of the stream."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        start = 0
        while (end := buffer.find(b"\n\n", start)) != -1:
            self._event(buffer[start:end])
            start = end + 2
        self._buffer = buffer[start:]

    def _event(self, block: bytes) -> None:
        if not block.startswith(b"event:"):
            return
        self.events += 1
        if self.first_content_at is None and block.startswith(b"event: content_block_delta"):
            self.first_content_at = time.perf_counter()
        # Only three events matter here; the many content deltas are skipped at a glance.
        if not block.startswith((b"event: message_", b"event:message_", b"event: error",
                                 b"event:error")):
            return
        name = b""
        data = b""
        for line in block.split(b"\n"):
            key, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if key == b"event":
                name = value
            elif key == b"data":
                data = data + b"\n" + value if data else value
        if name == b"error":
            self.error_type = error_type_of_event(data)
            return
        found = usage_of_event(name, data)
        if found is not None:
            self.usage = self.usage.updated(found)


@dataclass
class Outcome:
    """What happened upstream, for the account stage."""

    status: int = 0
    usage: Usage = field(default_factory=Usage)
    stream: bool = False
    error_type: str | None = None
    """The upstream's error type (HTTP error or mid-stream ``error`` event), or the proxy's."""
    upstream_request_id: str | None = None
    sent_at: float = 0.0
    """``perf_counter()`` when the request went upstream."""
    upstream_seconds: float = 0.0
    """From sending the request to the end of the answer."""
    first_byte_seconds: float | None = None
    """From sending the request to the first byte of the answer's body."""
    first_token_seconds: float | None = None
    """From sending the request to the first content delta (the whole body if not streamed)."""
    cost_usd: Decimal | None = None
    """Cost of the answer when it was computed on the way (for ``x-router-cost-usd``)."""
    client_disconnected: bool = False
    complete: bool = False
    """The whole answer reached the client."""


Pricer = Callable[[Usage], Decimal | None]


async def relay(
    response: aiohttp.ClientResponse,
    send: Send,
    extra_headers: Iterable[tuple[str, str]],
    outcome: Outcome,
    request_id: str,
    pricer: Pricer | None = None,
) -> None:
    """Relay an upstream response to the ASGI client, filling ``outcome`` as it goes.

    A stream that breaks after its first byte is ended with an Anthropic-shaped ``error`` event,
    so a client never mistakes half an answer for a whole one. ``pricer`` prices a non-streamed
    answer before its headers go out, for the ``x-router-cost-usd`` header.
    """
    started = outcome.sent_at
    outcome.status = response.status
    outcome.upstream_request_id = response.headers.get("request-id")
    content_type = response.headers.get("content-type", "")
    outcome.stream = response.status == 200 and content_type.startswith("text/event-stream")
    headers = client_headers(response, extra_headers, stream=outcome.stream)
    if not outcome.stream:
        try:
            body = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            kind = UpstreamTimeout if isinstance(exc, asyncio.TimeoutError) else UpstreamUnavailable
            raise kind("upstream broke off its answer") from exc
        outcome.first_byte_seconds = time.perf_counter() - started
        outcome.upstream_seconds = outcome.first_token_seconds = outcome.first_byte_seconds
        if response.status == 200:
            outcome.usage = usage_of_message(body) or Usage()
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

    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    tracker = StreamUsage()
    try:
        async for chunk in response.content.iter_any():
            if outcome.first_byte_seconds is None:
                outcome.first_byte_seconds = time.perf_counter() - started
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            tracker.feed(chunk)
    except (TimeoutError, aiohttp.ClientError) as exc:
        timed_out = isinstance(exc, asyncio.TimeoutError)
        error_type = "timeout_error" if timed_out else "api_error"
        message = "upstream went silent mid-stream" if timed_out else "upstream connection lost"
        tracker.error_type = tracker.error_type or error_type
        event = error_event(error_type, message, request_id)
        await send({"type": "http.response.body", "body": event, "more_body": True})
    outcome.usage = tracker.usage
    outcome.error_type = tracker.error_type
    outcome.upstream_seconds = time.perf_counter() - started
    if tracker.first_content_at is not None:
        outcome.first_token_seconds = tracker.first_content_at - started
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    outcome.complete = tracker.error_type is None


def usd_text(usd: Decimal) -> str:
    """Format a cost for a header: plain decimal, to a millionth of a cent."""
    return f"{usd.quantize(Decimal('1e-8')).normalize():f}"


def _error_type_of_body(body: bytes, status: int) -> str:
    """Return ``error.type`` of an upstream error body, or a name for the status if unreadable."""
    detail = error_type_of_event(body)
    if detail != "api_error" or b'"api_error"' in body:
        return detail
    return f"http_{status}"
