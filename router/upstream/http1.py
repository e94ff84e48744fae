"""A lean HTTP/1.1 client for one origin: keep-alive connections, answers parsed by httptools.

Why not aiohttp's ``ClientSession``: a loop of requests to the fake upstream cost 400-460 µs of
CPU each through it against 50-75 µs through this module, and replacing it cut the proxy's CPU
per request by about a fifth (docs/speed.md). The proxy needs little of what a general client
does: one origin, bodies already in memory, no cookies, no redirects, and its own timers around
every wait. What it does need is here: a bounded pool with idle expiry, TLS, chunked and
length-delimited answers (and ones delimited by the connection's end), gzip/deflate bodies, flow
control for a client that reads a stream slowly, and ``HTTP(S)_PROXY`` when
``upstream.trust_env`` asks for it.

Errors are the proxy's own: :class:`~router.errors.UpstreamTimeout` for a connect that took too
long, :class:`~router.errors.UpstreamUnavailable` for anything else that went wrong on the wire.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import socket
import ssl
import sys
import time
import urllib.request
import zlib
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import httptools

from router.errors import UpstreamTimeout, UpstreamUnavailable

IDLE_SECONDS = 15.0
"""An idle connection older than this is closed rather than reused: servers and load balancers
drop idle keep-alive connections (aiohttp's default is the same 15 s)."""
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
"""Bytes of an answer held for a reader before the socket stops being read, and after which it
is read again: a slow client slows the upstream instead of filling the proxy's memory."""
_DECODED = {b"gzip": 16 + zlib.MAX_WBITS, b"x-gzip": 16 + zlib.MAX_WBITS,
            b"deflate": zlib.MAX_WBITS}
"""Content codings the client decodes (the proxy asks for ``identity``; a server may not listen)."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests go: scheme, host and port, and how to get there."""

    host: str
    port: int
    tls: bool
    host_header: str
    """``Host``: the host, bracketed if IPv6, with the port unless it is the scheme's."""
    authority: str
    """``host:port`` as a ``CONNECT`` names it (bracketed if IPv6)."""
    proxy: tuple[str, int, str | None] | None = None
    """An HTTP proxy from the environment: host, port and its ``Proxy-Authorization``."""


def origin_of(base_url: str, *, trust_env: bool) -> Origin:
    """Return the :class:`Origin` of ``base_url`` (``http`` or ``https``).

    Raises:
        ValueError: not an http(s) URL with a host.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"upstream.base_url must be an http(s) URL, not {base_url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    # An internationalised name goes on the wire (Host, TLS name) in its ASCII form.
    host = parts.hostname if parts.hostname.isascii() else parts.hostname.encode("idna").decode()
    shown = f"[{host}]" if ":" in host else host
    authority = f"{shown}:{port}"
    host_header = shown if port == (443 if tls else 80) else authority
    proxy = _proxy_for(parts.scheme, host) if trust_env else None
    return Origin(host, port, tls, host_header, authority, proxy)


def _proxy_for(scheme: str, host: str) -> tuple[str, int, str | None] | None:
    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme)
    if not url or urllib.request.proxy_bypass(host):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        # Not echoed: a proxy URL may hold a password.
        raise ValueError(f"{scheme}_proxy must be an http:// proxy with a host "
                         f"(upstream.trust_env is on), not a {parts.scheme}:// one")
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
    return parts.hostname, parts.port or 80, auth


class Connection(asyncio.Protocol):
    """One keep-alive connection, and the answer being read on it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser = httptools.HttpResponseParser(self)
        self.begin(head=False)

    def begin(self, *, head: bool) -> None:
        """Forget the last answer: a new request goes out (``head``: one whose answer has no
        body)."""
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.decoded = False
        self._head = head
        self._framed = False  # Content-Length or chunked: the answer's end is in the bytes
        self._coding = b""
        self._decoder: Any = None
        self._decoded_any = False
        self._interim = False
        self._keep_alive = False
        self.headers_done = False
        self.complete = False
        self.error: UpstreamUnavailable | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._held = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.complete:
            # Bytes nobody asked for (a server's 408 on an idle connection, say): the parser
            # would take them for the start of the next answer. The connection is spent.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("upstream switched protocols")
        except httptools.HttpParserError as exc:
            self._fail(f"upstream sent a malformed answer ({exc})")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and not self._framed and exc is None:
            self._finish_body()  # delimited by the connection's end: this is its end
        elif not self.complete:
            self._fail(f"upstream connection lost{f': {type(exc).__name__}' if exc else ''}")

    # -- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.headers_done:
            return  # a trailer of a chunked body: never relayed as a header
        lname = name.lower()
        if lname == b"content-length" or (lname == b"transfer-encoding"
                                          and b"chunked" in value.lower()):
            self._framed = True
        elif lname == b"content-encoding":
            self._coding = value.strip().lower()
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._interim = True
            self.raw_headers = []
            self._framed = False
            self._coding = b""
            return
        self.status = status
        wbits = _DECODED.get(self._coding)
        if wbits is not None:
            self._decoder = zlib.decompressobj(wbits)
            self.decoded = True
        self.headers_done = True
        if self._head or status in (204, 304):
            self._complete()
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error as exc:
                if self._coding == b"deflate" and not self._decoded_any:
                    # "deflate" without its zlib wrapper, as some servers send it.
                    self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
                    self._decoded_any = True
                    self.on_body(body)
                    return
                self._fail(f"upstream sent a body that does not decode ({exc})")
                return
            self._decoded_any = True
            if not body:
                return
        self._chunks.append(body)
        self._held += len(body)
        if self._held > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        # Only meaningful inside the parser's callbacks: asked here, kept for the release.
        self._keep_alive = self._parser.should_keep_alive()
        if not self.complete:
            self._finish_body()

    def _finish_body(self) -> None:
        decoder = self._decoder
        if decoder is not None:
            rest = decoder.flush()
            if not decoder.eof:
                self._fail("upstream sent a compressed body that ends early")
                return
            if rest:
                self._chunks.append(rest)
        self._complete()

    # -- the reader's side

    async def answered(self) -> None:
        """Wait for the status line and headers."""
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    async def chunk(self) -> bytes:
        """Return the next piece of the body as it arrived; ``b""`` at its end."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._held -= len(data)
                if self._paused and self._held < _LOW_WATER and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            await self._wait()

    @property
    def reusable(self) -> bool:
        """Whether the answer was read to its end on a connection the server keeps open."""
        # Read to its last byte, too: a connection whose reading was paused for a slow reader
        # would never hear the next answer.
        return (self.complete and self.error is None and not self.closed and not self._head
                and self._keep_alive and not self._chunks and not self._paused)

    def close(self) -> None:
        """Close the connection: the upstream stops generating."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _complete(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, message: str) -> None:
        if self.error is None and not self.complete:
            self.error = UpstreamUnavailable(message)
        self.close()
        self._wake()

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Pool:
    """Keep-alive connections to one origin, at most ``limit`` at once (0 or less: no limit,
    as aiohttp's pool read ``upstream.max_connections: 0``)."""

    def __init__(self, origin: Origin, limit: int) -> None:
        self.origin = origin
        self.limit = limit if limit > 0 else sys.maxsize
        self.closed = False
        self._idle: list[Connection] = []
        self._busy: set[Connection] = set()
        self._opening = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop the connections live on (known from the first connect)."""
        self._tls = ssl.create_default_context() if origin.tls else None
        proxy = origin.proxy
        self._absolute = proxy is not None and not origin.tls
        """Plain HTTP through a proxy: the request line names the whole URL."""
        self._proxy_auth = proxy[2] if proxy is not None else None

    def counts(self) -> tuple[int, int]:
        """(in use, idle) connections."""
        return len(self._busy), len(self._idle)

    async def request(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                      body: bytes | None, *, connect: float | None) -> Connection:
        """Send a request and return its connection once the answer's headers arrived.

        Raises:
            UpstreamTimeout: no connection within ``connect`` seconds.
            UpstreamUnavailable: the upstream could not be reached, or hung up.
        """
        head = self._head(method, target, headers, body)
        conn = await self._acquire(connect)
        try:
            conn.begin(head=method == "HEAD")
            assert conn.transport is not None
            conn.transport.write(head + body if body else head)
            await conn.answered()
        except BaseException:
            self.release(conn, reuse=False)
            raise
        return conn

    def release(self, conn: Connection, *, reuse: bool) -> None:
        """Put a connection back in the pool, or close it; either way its slot is free.
        Call it once per :meth:`request` (:class:`~router.upstream.pool.UpstreamResponse` sees
        to that): once reused, the connection is another request's."""
        if conn not in self._busy:
            return
        self._busy.discard(conn)
        if reuse and conn.reusable and not self.closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()
        self._wake_one()

    def release_soon(self, conn: Connection) -> None:
        """Close a connection and free its slot from any thread (a garbage collector's may
        run in the ledger's or the token counter's): the work is done on the pool's loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # RuntimeError: the loop closed meanwhile, and the connection with it.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(functools.partial(self.release, conn, reuse=False))

    async def close(self) -> None:
        """Close every connection; waiters get :class:`UpstreamUnavailable`."""
        self.closed = True
        for conn in (*self._idle, *self._busy):
            conn.close()
        self._idle.clear()
        self._busy.clear()
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _head(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
              body: bytes | None) -> bytes:
        origin = self.origin
        if self._absolute:
            target = f"http://{origin.host_header}{target}"
        lines = [f"{method} {target} HTTP/1.1\r\nHost: {origin.host_header}".encode("latin-1")]
        for name, value in headers:
            line = b"%s: %s" % (name, value)
            if b"\n" in line or b"\r" in line:
                # Never from a client (the server parsed its headers) nor from a valid config.
                raise UpstreamUnavailable("a request header holds a line break")
            lines.append(line)
        if self._absolute and self._proxy_auth:
            lines.append(f"Proxy-Authorization: {self._proxy_auth}".encode("latin-1"))
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(b"Content-Length: %d" % len(body or b""))
        lines.append(b"\r\n")
        return b"\r\n".join(lines)

    async def _acquire(self, connect: float | None) -> Connection:
        while True:
            if self.closed:
                raise UpstreamUnavailable("upstream client is closed")
            now = time.monotonic()
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                    self._busy.add(conn)
                    return conn
                conn.close()
            if len(self._busy) + self._opening < self.limit:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._queue.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # the slot it was woken for goes to the next
                raise
        self._opening += 1
        try:
            conn = await self._connect(connect)
        except BaseException:
            self._wake_one()  # the slot this connection would have taken is free
            raise
        finally:
            self._opening -= 1
        if self.closed:
            conn.close()
            raise UpstreamUnavailable("upstream client is closed")
        self._busy.add(conn)
        return conn

    async def _connect(self, timeout: float | None) -> Connection:
        origin = self.origin
        loop = self._loop = asyncio.get_running_loop()
        host, port = (origin.proxy[0], origin.proxy[1]) if origin.proxy else (origin.host,
                                                                                origin.port)
        try:
            async with asyncio.timeout(timeout):
                if origin.proxy is not None and origin.tls:
                    return await self._tunnel(host, port)
                _, conn = await loop.create_connection(
                    Connection, host, port, ssl=self._tls,
                    server_hostname=origin.host if self._tls else None)
        except TimeoutError as exc:
            raise UpstreamTimeout("upstream unreachable: no connection in time") from exc
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise UpstreamUnavailable(f"upstream unreachable: {type(exc).__name__}") from exc
        _no_delay(conn)
        return conn

    async def _tunnel(self, host: str, port: int) -> Connection:
        """HTTPS through an HTTP proxy: CONNECT, then TLS inside the tunnel."""
        origin = self.origin
        loop = asyncio.get_running_loop()
        transport, probe = await loop.create_connection(Connection, host, port)
        lines = [f"CONNECT {origin.authority} HTTP/1.1", f"Host: {origin.authority}"]
        if self._proxy_auth:
            lines.append(f"Proxy-Authorization: {self._proxy_auth}")
        probe.begin(head=True)  # a CONNECT answer has no body
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        try:
            await probe.answered()
            if probe.status != 200:
                raise UpstreamUnavailable(f"upstream unreachable: the proxy answered "
                                          f"{probe.status} to CONNECT")
            conn = Connection()
            assert self._tls is not None
            tls = await loop.start_tls(transport, conn, self._tls, server_hostname=origin.host)
        except BaseException:
            transport.close()
            raise
        if tls is None:
            transport.close()
            raise UpstreamUnavailable("upstream unreachable: TLS through the proxy failed")
        conn.connection_made(tls)
        return conn

    def _wake_one(self) -> None:
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _no_delay(conn: Connection) -> None:
    # Small requests go out whole and at once rather than waiting on Nagle's algorithm.
    sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
