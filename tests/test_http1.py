"""The lean upstream HTTP/1.1 client (router/upstream/http1.py) against real loopback servers.

Each server here is a real socket server written for one wire behaviour the Anthropic API or a
load balancer in front of it can show (chunked and length-delimited answers, one delimited by
the connection's end, a gzip body, an interim 100 answer, an idle connection closed by the
server, a forward proxy), so the client is held to the bytes, not to a mock.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import socket
import ssl
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trustme

from router.errors import UpstreamTimeout, UpstreamUnavailable
from router.upstream.http1 import Pool, origin_of
from router.upstream.pool import UpstreamResponse

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
HEADERS = [(b"x-api-key", b"sk-test"), (b"content-type", b"application/json")]
BODY = b'{"model":"claude-haiku-4-5","max_tokens":8,"messages":[]}'


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request off the wire: its head and its body; None once the client hung up."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server running ``handler`` per connection: its URL and a connection count."""
    opened: list[int] = []

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(1)
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(counted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", opened
    finally:
        server.close()


def answer(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + b"".join(
        h + b"\r\n" for h in extra)
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


async def keep_answering(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await read_request(reader) is not None:
        writer.write(answer(b'{"ok":true}'))
        await writer.drain()


async def body_of(pool: Pool, url_path: str = "/v1/messages") -> tuple[int, bytes, Pool]:
    conn = await pool.request("POST", url_path, HEADERS, BODY, connect=5)
    parts = []
    while chunk := await conn.chunk():
        parts.append(chunk)
    pool.release(conn, reuse=True)
    return conn.status, b"".join(parts), pool


def pool_for(url: str, limit: int = 8) -> Pool:
    return Pool(origin_of(url, trust_env=False), limit)


def test_sequential_requests_share_one_keep_alive_connection() -> None:
    async def main() -> None:
        async with serving(keep_answering) as (url, opened):
            pool = pool_for(url)
            for _ in range(20):
                status, body, _ = await body_of(pool)
                assert (status, body) == (200, b'{"ok":true}')
            assert len(opened) == 1
            assert pool.counts() == (0, 1)
            await pool.close()

    asyncio.run(main())


def test_chunked_and_connection_delimited_answers_arrive_whole() -> None:
    events = [b"event: ping\ndata: {}\n\n" * 50, b"event: message_stop\ndata: {}\n\n"]

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        for event in events:
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await read_request(reader)  # kept open: the client must not wait for the close

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        for event in events:
            writer.write(event)
            await writer.drain()
        writer.close()

    async def main() -> None:
        for handler, reused in ((chunked, 1), (until_close, 0)):
            async with serving(handler) as (url, _):
                pool = pool_for(url)
                status, body, _ = await asyncio.wait_for(body_of(pool), 5)
                assert status == 200 and body == b"".join(events)
                assert pool.counts() == (0, reused), handler.__name__
                await pool.close()

    asyncio.run(main())


def test_a_gzip_answer_is_decoded_and_says_so() -> None:
    payload = b'{"type":"message","content":[]}' * 100

    async def zipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(gzip.compress(payload), b"content-encoding: gzip"))
        await writer.drain()

    async def main() -> None:
        async with serving(zipped) as (url, _):
            pool = pool_for(url)
            conn = await pool.request("POST", "/v1/messages", HEADERS, BODY, connect=5)
            assert conn.decoded
            parts = []
            while chunk := await conn.chunk():
                parts.append(chunk)
            assert b"".join(parts) == payload
            pool.release(conn, reuse=True)
            await pool.close()

    asyncio.run(main())


def test_an_interim_100_answer_is_skipped() -> None:
    async def continued(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b'{"ok":1}', b"request-id: r1"))
        await writer.drain()

    async def main() -> None:
        async with serving(continued) as (url, _):
            pool = pool_for(url)
            conn = await pool.request("POST", "/v1/messages", HEADERS, BODY, connect=5)
            assert conn.status == 200 and (b"request-id", b"r1") in conn.raw_headers
            assert await conn.chunk() == b'{"ok":1}'
            pool.release(conn, reuse=True)
            await pool.close()

    asyncio.run(main())


def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    async def one_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"{}"))  # keep-alive by default, then closed while idle
        await writer.drain()
        await asyncio.sleep(0.05)

    async def main() -> None:
        async with serving(one_each) as (url, opened):
            pool = pool_for(url)
            for _ in range(3):
                assert (await body_of(pool))[:2] == (200, b"{}")
                await asyncio.sleep(0.2)  # the server's close reaches the client meanwhile
            assert len(opened) == 3
            await pool.close()

    asyncio.run(main())


def test_the_pool_bound_queues_requests_and_frees_slots() -> None:
    active = 0
    peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active, peak
        while await read_request(reader) is not None:
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.05)
            active -= 1
            writer.write(answer(b"{}"))
            await writer.drain()

    async def main() -> None:
        async with serving(slow) as (url, opened):
            pool = pool_for(url, limit=2)
            results = await asyncio.wait_for(
                asyncio.gather(*(body_of(pool) for _ in range(8))), 10)
            assert all(r[:2] == (200, b"{}") for r in results)
            assert peak == 2 and len(opened) == 2
            assert pool.counts() == (0, 2)
            await pool.close()

    asyncio.run(main())


def test_a_request_cancelled_while_waiting_closes_its_connection() -> None:
    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async def main() -> None:
        async with serving(never) as (url, _):
            pool = pool_for(url, limit=1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await pool.request("POST", "/v1/messages", HEADERS, BODY, connect=5)
            assert pool.counts() == (0, 0)  # the slot is free again, nothing left idle
            await pool.close()

    asyncio.run(main())


def test_failures_arrive_as_the_proxys_errors() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial")
        await writer.drain()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async def main() -> None:
        async with serving(hang_up) as (url, _):
            pool = pool_for(url)
            conn = await pool.request("POST", "/v1/messages", HEADERS, BODY, connect=5)
            assert await conn.chunk() == b'{"partial'
            with pytest.raises(UpstreamUnavailable, match="connection lost"):
                await conn.chunk()
            pool.release(conn, reuse=True)
            assert pool.counts() == (0, 0)
        async with serving(garbage) as (url, _):
            with pytest.raises(UpstreamUnavailable, match="malformed"):
                await pool_for(url).request("POST", "/", HEADERS, BODY, connect=5)
        # Nothing listens on port 9 of loopback.
        with pytest.raises(UpstreamUnavailable, match="unreachable"):
            await pool_for("http://127.0.0.1:9").request("GET", "/", HEADERS, None, connect=5)
        # 192.0.2.0/24 is TEST-NET-1: never routed, so the connect hangs until its limit.
        with pytest.raises((UpstreamTimeout, UpstreamUnavailable)):
            await pool_for("http://192.0.2.1:81").request("GET", "/", HEADERS, None,
                                                          connect=0.2)

    asyncio.run(main())


def test_a_line_break_in_a_header_never_reaches_the_wire() -> None:
    pool = pool_for("http://127.0.0.1:9")
    with pytest.raises(UpstreamUnavailable, match="line break"):
        asyncio.run(pool.request("POST", "/", [(b"x-a", b"1\r\nx-injected: 2")], BODY, connect=1))


def test_http_proxy_from_the_environment_when_trust_env(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    seen: list[bytes] = []

    async def forward_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (request := await read_request(reader)) is not None:
            seen.append(request[0].split(b"\r\n")[0])
            seen.extend(line for line in request[0].split(b"\r\n")
                        if line.lower().startswith(b"proxy-authorization"))
            writer.write(answer(b'{"via":"proxy"}'))
            await writer.drain()

    async def main() -> None:
        async with serving(forward_proxy) as (proxy_url, _):
            monkeypatch.setenv("HTTP_PROXY", proxy_url.replace("http://", "http://u:p@"))
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            pool = Pool(origin_of("http://api.example.test:8080/", trust_env=True), 4)
            status, body, _ = await body_of(pool, "/v1/messages?beta=true")
            assert (status, body) == (200, b'{"via":"proxy"}')
            assert seen[0] == b"POST http://api.example.test:8080/v1/messages?beta=true HTTP/1.1"
            assert seen[1] == b"Proxy-Authorization: Basic dTpw"
            await pool.close()
            # Without trust_env the environment is not read.
            assert origin_of("http://api.example.test:8080", trust_env=False).proxy is None

    asyncio.run(main())


def _tls_server_context(monkeypatch: pytest.MonkeyPatch, where: Path) -> ssl.SSLContext:
    """A server context for ``localhost`` from a throwaway CA the client is made to trust."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    # OpenSSL's default verify paths (what the client's default context loads) honour it.
    monkeypatch.setenv("SSL_CERT_FILE", str(where / "ca.pem"))
    return server


def test_https_directly_and_through_a_connect_proxy(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    server_context = _tls_server_context(monkeypatch, tmp_path)
    tunnels: list[bytes] = []

    async def connect_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        assert request is not None
        line = request[0].split(b"\r\n")[0]
        tunnels.append(line)
        host, port = line.split()[1].rsplit(b":", 1)
        up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)

    async def main() -> None:
        server = await asyncio.start_server(keep_answering, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        try:
            direct = Pool(origin_of(f"https://localhost:{port}", trust_env=False), 4)
            for _ in range(3):
                assert (await body_of(direct))[:2] == (200, b'{"ok":true}')
            assert direct.counts() == (0, 1)
            await direct.close()
            async with serving(connect_proxy) as (proxy_url, _):
                monkeypatch.setenv("HTTPS_PROXY", proxy_url)
                monkeypatch.delenv("NO_PROXY", raising=False)
                monkeypatch.delenv("no_proxy", raising=False)
                tunnelled = Pool(origin_of(f"https://localhost:{port}", trust_env=True), 4)
                for _ in range(2):
                    assert (await body_of(tunnelled))[:2] == (200, b'{"ok":true}')
                assert tunnels == [f"CONNECT localhost:{port} HTTP/1.1".encode()]
                await tunnelled.close()
        finally:
            server.close()

    asyncio.run(main())


def test_a_connection_released_twice_is_pooled_once() -> None:
    async def main() -> None:
        async with serving(keep_answering) as (url, opened):
            pool = pool_for(url)
            conn = await pool.request("POST", "/v1/messages", HEADERS, BODY, connect=5)
            while await conn.chunk():
                pass
            pool.release(conn, reuse=True)
            pool.release(conn, reuse=True)  # a relay and its caller both finishing
            assert pool.counts() == (0, 1)
            first, second = await asyncio.gather(body_of(pool), body_of(pool))
            assert first[:2] == second[:2] == (200, b'{"ok":true}')
            assert len(opened) == 2  # two at once: two connections, never one shared
            await pool.close()

    asyncio.run(main())


def test_a_limit_of_zero_means_no_limit() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            await asyncio.sleep(0.05)
            writer.write(answer(b"{}"))
            await writer.drain()

    async def main() -> None:
        async with serving(slow) as (url, opened):
            pool = pool_for(url, limit=0)
            results = await asyncio.wait_for(
                asyncio.gather(*(body_of(pool) for _ in range(6))), 10)
            assert all(r[:2] == (200, b"{}") for r in results)
            assert len(opened) == 6
            await pool.close()

    asyncio.run(main())


def test_framing_edge_cases_do_not_pass_for_whole_answers() -> None:
    payload = b'{"type":"message","content":[]}' * 50

    async def trailers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n"
                     b"0\r\nx-trailer: 1\r\ncontent-encoding: gzip\r\n\r\n")
        await writer.drain()
        await read_request(reader)

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"trunc")
        await writer.drain()
        # A reset, not an orderly end: linger 0 makes close() send RST instead of FIN.
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def short_gzip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(gzip.compress(payload)[:40], b"content-encoding: gzip"))
        await writer.drain()

    async def raw_deflate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        writer.write(answer(squeeze.compress(payload) + squeeze.flush(),
                            b"content-encoding: deflate"))
        await writer.drain()

    async def read_all(url: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        pool = pool_for(url)
        conn = await pool.request("POST", "/v1/messages", HEADERS, BODY, connect=5)
        parts = []
        try:
            while chunk := await conn.chunk():
                parts.append(chunk)
        finally:
            pool.release(conn, reuse=True)
            await pool.close()
        return b"".join(parts), conn.raw_headers

    async def main() -> None:
        async with serving(trailers) as (url, _):
            body, headers = await read_all(url)
            assert body == b"hello"
            assert all(name not in (b"x-trailer", b"content-encoding") for name, _ in headers)
        async with serving(reset) as (url, _):
            with pytest.raises(UpstreamUnavailable, match="connection lost"):
                await read_all(url)
        async with serving(short_gzip) as (url, _):
            with pytest.raises(UpstreamUnavailable, match="ends early"):
                await read_all(url)
        async with serving(raw_deflate) as (url, _):
            assert (await read_all(url))[0] == payload

    asyncio.run(main())


def test_an_international_host_goes_on_the_wire_in_ascii() -> None:
    origin = origin_of("https://bücher.example:8443/anthropic", trust_env=False)
    assert origin.host == "xn--bcher-kva.example"
    assert origin.host_header == "xn--bcher-kva.example:8443"


def test_an_answer_finished_twice_leaves_the_next_answer_on_its_connection_alone() -> None:
    async def hop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(answer(b"{}", b"connection: keep-alive, x-hop", b"x-hop: 1",
                                b"request-id: req_1"))
            await writer.drain()

    async def main() -> None:
        async with serving(hop) as (url, opened):
            pool = pool_for(url)
            first = UpstreamResponse(
                await pool.request("POST", "/v1/messages", HEADERS, BODY, connect=5), pool)
            assert await first.read() == b"{}"
            # Hop-by-hop on the way back too: x-hop is named by the answer's Connection header.
            relayed = dict(first.relayed_headers([], stream=False))
            assert b"x-hop" not in relayed and b"connection" not in relayed
            assert relayed[b"request-id"] == b"req_1"
            first.finish(reuse=True)
            second = UpstreamResponse(
                await pool.request("POST", "/v1/messages", HEADERS, BODY, connect=5), pool)
            first.finish(reuse=False)  # late: the connection is the second answer's now
            assert await second.read() == b"{}" and second.header(b"request-id") == "req_1"
            second.finish(reuse=True)
            assert len(opened) == 1 and pool.counts() == (0, 1)
            await pool.close()

    asyncio.run(main())


def test_an_answer_dropped_unfinished_gives_its_slot_back_even_if_collected_elsewhere() -> None:
    async def main() -> None:
        async with serving(keep_answering) as (url, _):
            pool = pool_for(url, limit=1)
            dropped = UpstreamResponse(
                await pool.request("POST", "/v1/messages", HEADERS, BODY, connect=5), pool)
            assert pool.counts() == (1, 0)
            # Collected in another thread, as a garbage collection run by the ledger's writer
            # would: the release must still happen on the pool's own loop.
            holder = [dropped]
            del dropped
            collector = threading.Thread(target=holder.clear)
            collector.start()
            collector.join()
            gc.collect()
            await asyncio.sleep(0.05)
            assert pool.counts()[0] == 0
            # The one slot is free again: the next request is served, not queued for ever.
            assert (await asyncio.wait_for(body_of(pool), 5))[:2] == (200, b'{"ok":true}')
            await pool.close()

    asyncio.run(main())


def test_an_idle_connection_that_hears_unasked_bytes_is_not_reused() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await read_request(reader) is None:
            return
        writer.write(answer(b'{"n":1}'))
        await writer.drain()
        await asyncio.sleep(0.05)
        # What some servers send on a keep-alive connection left idle, before closing it.
        writer.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        await read_request(reader)

    async def main() -> None:
        async with serving(chatty) as (url, opened):
            pool = pool_for(url)
            assert (await body_of(pool))[:2] == (200, b'{"n":1}')
            await asyncio.sleep(0.2)
            assert (await body_of(pool))[:2] == (200, b'{"n":1}')  # not the stray 408
            assert len(opened) == 2
            await pool.close()

    asyncio.run(main())
