"""The thinnest aiohttp pass-through: a calibration target for bench/run.py, not the product.

    .venv/bin/python bench/passthrough.py --upstream http://127.0.0.1:9001 [--port 0]

No routing, no metrics, no logs, no error shaping: it relays the request's body and headers to
the upstream and the answer back, chunk by chunk. What it costs per request is what moving the
bytes through a Python process costs; the proxy's cost above it is the proxy's own work.
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
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.upstream, args.host, args.port))
