"""The upstream connection pool, and which headers cross the proxy in each direction.

One pool of keep-alive connections per worker (:class:`Upstream`), opened in the app's
lifespan, over the lean HTTP/1.1 client of :mod:`router.upstream.http1`. :class:`UpstreamResponse`
hands the rest of the proxy status, headers and body chunks; every failure on the wire arrives
as the proxy's own error (:class:`~router.errors.UpstreamUnavailable`,
:class:`~router.errors.UpstreamTimeout`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from router.config import UpstreamConfig
from router.errors import UpstreamUnavailable
from router.upstream.http1 import Connection, Pool, origin_of

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
_NOT_FORWARDED = frozenset(name.encode("latin-1") for name in _HOP_BY_HOP | {
    "host", "content-length", "accept-encoding", "expect"})
# The server frames the body itself.
_NOT_RELAYED = frozenset(name.encode("latin-1") for name in _HOP_BY_HOP | {"content-length"})
"""As bytes: the answer's raw header names are checked against it, every request."""


def _hop_by_hop(pairs: Iterable[tuple[bytes, bytes]], base: frozenset[bytes]
                ) -> frozenset[bytes]:
    """Return ``base`` plus the names a ``Connection`` header among ``pairs`` lists: those are
    hop-by-hop too (RFC 9110 §7.6.1), whichever way the message goes."""
    dropped = base
    for name, value in pairs:
        if name.lower() == b"connection":
            dropped = dropped | {token.strip().lower() for token in value.split(b",")}
    return dropped


class UpstreamResponse:
    """One upstream answer, its status line in hand and its body still to read."""

    __slots__ = ("_body", "_conn", "_decoded", "_headers", "_pool", "_raw", "status")

    def __init__(self, conn: Connection, pool: Pool) -> None:
        self._conn: Connection | None = conn
        """None once finished: the connection may be another request's by then."""
        self._pool = pool
        self._body: bytes | None = None
        self._headers: Mapping[str, str] | None = None
        self._raw = conn.raw_headers  # this answer's own list: the next answer gets a new one
        self._decoded = conn.decoded
        self.status = conn.status

    def __del__(self) -> None:
        # A safety net, as aiohttp's responses have: an answer dropped unfinished (a task
        # cancelled between attempts) must not hold its pool slot for ever. The collector may
        # run in another thread: the release itself happens on the pool's loop.
        if self._conn is not None and not self._pool.closed:
            self._pool.release_soon(self._conn)

    @property
    def headers(self) -> Mapping[str, str]:
        """The answer's headers by lower-cased name; the first of repeated names wins."""
        if self._headers is None:
            # Built on demand: only error answers need more than the two :meth:`header` finds.
            self._headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                             for k, v in reversed(self._raw)}
        return self._headers

    def header(self, name: bytes) -> str | None:
        """The first value of the header ``name`` (lower-case), or None."""
        for key, value in self._raw:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    @property
    def is_stream(self) -> bool:
        """A 200 answered as server-sent events."""
        return self.status == 200 and (self.header(b"content-type") or "").startswith(
            "text/event-stream")

    async def read(self) -> bytes:
        """Return the whole body (kept, so a later call returns it again).

        Raises:
            UpstreamUnavailable: the body broke off.
        """
        if self._body is None:
            parts = []
            while chunk := await self.chunk():
                parts.append(chunk)
            self._body = b"".join(parts)
        return self._body

    async def chunk(self) -> bytes:
        """Return the next chunk of the body as it arrived; ``b""`` at its end.

        Raises:
            UpstreamUnavailable: the body broke off.
        """
        if self._conn is None:
            raise UpstreamUnavailable("upstream answer already finished")
        return await self._conn.chunk()

    def relayed_headers(self, extra: Iterable[tuple[str, str]], *, stream: bool
                        ) -> list[tuple[bytes, bytes]]:
        """Return the response headers to relay to the client, plus ``extra`` (x-router-*, or an
        ``x-should-retry`` of the proxy's), which replace any upstream header of the same name."""
        added = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra]
        replaced = {k for k, _ in added}
        decoded = self._decoded
        dropped = _hop_by_hop(self._raw, _NOT_RELAYED)
        out: list[tuple[bytes, bytes]] = []
        for name, value in self._raw:
            lname = name.lower()
            if lname in replaced or lname in dropped:
                continue
            if (stream and lname == b"cache-control") or (decoded
                                                           and lname == b"content-encoding"):
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
        upstream stops generating. Only the first call counts."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn, reuse=reuse)


class Upstream:
    """The keep-alive connection pool to the upstream API, one per worker."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.base_url = config.base_url.rstrip("/")
        self._prefix = urlsplit(self.base_url).path
        """A base URL's own path (a gateway's ``/anthropic``, say) goes before every request's."""
        self._pool: Pool | None = None

    async def open(self) -> None:
        """Create the pool; call from the app's lifespan, inside the running loop.

        Raises:
            ValueError: the base URL, or a proxy from the environment, is not usable.
        """
        # Proxies from the environment only when configured: they break TLS for many users.
        origin = origin_of(self.base_url, trust_env=self.config.trust_env)
        self._pool = Pool(origin, self.config.max_connections)

    async def close(self) -> None:
        """Close the pool; call from the lifespan's exit."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def ready(self) -> bool:
        """Whether the pool is open."""
        return self._pool is not None and not self._pool.closed

    def connections(self) -> tuple[int, int]:
        """(in use, idle) connections of the pool, for leak checks."""
        return self._pool.counts() if self._pool is not None else (0, 0)

    @staticmethod
    def request_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Return the client's headers to send upstream: all but hop-by-hop ones, byte for byte
        as sent."""
        pairs = list(raw)
        dropped = _hop_by_hop(pairs, _NOT_FORWARDED)
        out = [(name, value) for name, value in pairs if name.lower() not in dropped]
        # Uncompressed answers let the proxy read usage and relay SSE without re-encoding.
        out.append((b"Accept-Encoding", b"identity"))
        return out

    async def send(self, method: str, path_qs: str, headers: list[tuple[bytes, bytes]],
                   body: bytes | None, *, connect: float | None) -> UpstreamResponse:
        """Send one request and return the response once its status line arrived. The caller
        bounds the wait (one timer for the status line and the first event).

        Raises:
            UpstreamUnavailable: the upstream could not be reached or hung up.
            UpstreamTimeout: no connection within ``connect`` seconds.
        """
        pool = self._pool
        if pool is None:
            raise UpstreamUnavailable("upstream client is not open")
        # The path is the client's, already encoded: sent as it came, not normalised.
        conn = await pool.request(method, self._prefix + path_qs, headers, body,
                                  connect=connect)
        return UpstreamResponse(conn, pool)
