"""The thinnest aiohttp pass-through: a calibration target for bench/run.py, not the product.

    .venv/bin/python bench/passthrough.py --upstream http://127.0.0.1:9001 [--port 0] [--asgi]

No routing, no metrics, no logs, no error shaping: it relays the request's body and headers to
the upstream and the answer back, chunk by chunk. What it costs per request is what moving the
bytes through a Python process costs; the proxy's cost above it is the proxy's own work.

``--asgi`` serves the same relay as a bare ASGI app under uvicorn (httptools, uvloop, no access
log), as the proxy is served: the difference between the two is the cost of the server layer.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import ClientSession, TCPConnector, web

HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "host", "content-length"})


def pass_through(upstream: str) -> web.Application:
    """Return an app relaying every request to ``upstream``."""
    app = web.Application()

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        app["session"] = ClientSession(connector=TCPConnector(limit=1000), auto_decompress=False)
        yield
        await app["session"].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with request.app["session"].request(
            request.method, upstream + request.path_qs, headers=headers,
            data=await request.read()) as answer:
            response = web.StreamResponse(status=answer.status, headers={
                k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP})
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


def asgi_pass_through(upstream: str):  # type: ignore[no-untyped-def]
    """Return a bare ASGI app relaying every request to ``upstream`` (its pool opened lazily)."""
    sessions: list[ClientSession] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        if not sessions:
            sessions.append(ClientSession(connector=TCPConnector(limit=1000),
                                          auto_decompress=False))
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1") not in HOP_BY_HOP]
        path = scope["raw_path"].decode("latin-1")
        query = scope["query_string"].decode("latin-1")
        async with sessions[0].request(scope["method"], upstream + path + (
                "?" + query if query else ""), headers=headers, data=body) as answer:
            await send({"type": "http.response.start", "status": answer.status, "headers": [
                (k, v) for k, v in answer.raw_headers if k.lower().decode() not in HOP_BY_HOP]})
            async for chunk in answer.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def serve_asgi(upstream: str, host: str, port: int) -> None:
    """Serve the ASGI relay under uvicorn as ``router serve`` does; print ``listening on``."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind((host, port))
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    print(f"listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(asgi_pass_through(upstream.rstrip("/")), log_config=None,
                            access_log=False, server_header=False, date_header=False,
                            lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


async def serve(upstream: str, host: str, port: int) -> None:
    """Serve until killed; print ``listening on URL`` once ready."""
    runner = web.AppRunner(pass_through(upstream.rstrip("/")), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening on http://{host}:{bound}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--asgi", action="store_true", help="a bare ASGI app under uvicorn")
    args = parser.parse_args()
    if args.asgi:
        serve_asgi(args.upstream, args.host, args.port)
        raise SystemExit(0)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.upstream, args.host, args.port))
