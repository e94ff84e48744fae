"""The upstream connection pool, and which headers cross the proxy in each direction.

One pooled aiohttp session per worker (:class:`Upstream`), opened in the app's lifespan. This
is the only module that knows aiohttp: :class:`UpstreamResponse` hands the rest of the proxy
status, headers and body chunks, and turns aiohttp's errors into the proxy's own
(:class:`~router.errors.UpstreamUnavailable`, :class:`~router.errors.UpstreamTimeout`), so
that forwarding and relaying import without it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from router.config import UpstreamConfig
from router.errors import UpstreamTimeout, UpstreamUnavailable

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
_NOT_RELAYED = frozenset(
    name.encode("latin-1") for name in _HOP_BY_HOP | {"content-length", "content-encoding"})
"""As bytes: the answer's raw header names are checked against it, every request."""


def _translated(exc: BaseException, message: str) -> UpstreamTimeout | UpstreamUnavailable:
    """The proxy's error for an aiohttp failure: a timeout, or a lost connection."""
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(message)
    return UpstreamUnavailable(f"{message}: {type(exc).__name__}")


@functools.lru_cache(maxsize=64)
def _connect_timeout(connect: float | None) -> aiohttp.ClientTimeout:
    """The session timeout of an attempt: only the connect wait (the caller times the rest);
    one object per distinct wait, not one per request."""
    return aiohttp.ClientTimeout(total=None, sock_connect=connect)


class UpstreamResponse:
    """One upstream answer, its status line in hand and its body still to read."""

    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: CIMultiDictProxy[str] = response.headers

    @property
    def is_stream(self) -> bool:
        """A 200 answered as server-sent events."""
        return self.status == 200 and self.headers.get("content-type", "").startswith(
            "text/event-stream")

    async def read(self) -> bytes:
        """Return the whole body (kept, so a later call returns it again).

        Raises:
            UpstreamUnavailable, UpstreamTimeout: the body broke off.
        """
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translated(exc, "upstream broke off its answer") from exc

    async def chunk(self) -> bytes:
        """Return the next chunk of the body as it arrived; ``b""`` at its end.

        Raises:
            UpstreamUnavailable, UpstreamTimeout: the body broke off.
        """
        try:
            return await self._response.content.readany()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translated(exc, "upstream connection lost") from exc

    def relayed_headers(self, extra: Iterable[tuple[str, str]], *, stream: bool
                        ) -> list[tuple[bytes, bytes]]:
        """Return the response headers to relay to the client, plus ``extra`` (x-router-*, or an
        ``x-should-retry`` of the proxy's), which replace any upstream header of the same name."""
        added = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra]
        replaced = {k for k, _ in added}
        out: list[tuple[bytes, bytes]] = []
        for name, value in self._response.raw_headers:
            lname = name.lower()
            if lname in replaced or lname in _NOT_RELAYED:
                continue
            if stream and lname == b"cache-control":
                continue
            out.append((lname, value))
        if stream:
            # Keep intermediaries (nginx, CDNs) from buffering or re-encoding the stream.
            out.append((b"cache-control", b"no-cache, no-transform"))
            out.append((b"x-accel-buffering", b"no"))
        out.extend(added)
        return out

    def finish(self, *, reuse: bool) -> None:
        """Return the connection to the pool (the body was read to its end), or drop it so the
        upstream stops generating."""
        if reuse:
            self._response.release()
        else:
            self._response.close()


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
            # A cookie the upstream sets for one client must not ride along on another's
            # requests; a jar would also be searched on every request.
            cookie_jar=aiohttp.DummyCookieJar(),
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

    def connections(self) -> tuple[int, int]:
        """(in use, idle) connections of the pool, for leak checks."""
        connector = self._session.connector if self._session is not None else None
        if not isinstance(connector, aiohttp.BaseConnector):
            return 0, 0
        in_use = len(getattr(connector, "_acquired", ()))
        idle = sum(len(v) for v in getattr(connector, "_conns", {}).values())
        return in_use, idle

    @staticmethod
    def request_headers(raw: Iterable[tuple[bytes, bytes]]) -> CIMultiDict[str]:
        """Return the client's headers to send upstream: all but hop-by-hop ones, as sent."""
        pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]
        dropped = _NOT_FORWARDED
        for name, value in pairs:
            if name.lower() == "connection":
                dropped = dropped | {token.strip().lower() for token in value.split(",")}
        out: CIMultiDict[str] = CIMultiDict(
            (name, value) for name, value in pairs if name.lower() not in dropped
        )
        # Uncompressed answers let the proxy read usage and relay SSE without re-encoding.
        out["Accept-Encoding"] = "identity"
        return out

    async def send(self, method: str, path_qs: str, headers: CIMultiDict[str],
                   body: bytes | None, *, connect: float | None) -> UpstreamResponse:
        """Send one request and return the response once its status line arrived. The caller
        bounds the wait (one timer for the status line and the first event).

        Raises:
            UpstreamUnavailable: the upstream could not be reached or hung up.
            UpstreamTimeout: no connection within ``connect`` seconds.
        """
        if self._session is None:
            raise UpstreamUnavailable("upstream client is not open")
        try:
            # encoded=True: the path is the client's, already encoded; not normalised.
            response = await self._session.request(
                method, URL(self.base_url + path_qs, encoded=True), data=body, headers=headers,
                allow_redirects=False,
                timeout=_connect_timeout(connect),
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translated(exc, "upstream unreachable") from exc
        return UpstreamResponse(response)
