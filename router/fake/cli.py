"""``python -m router.fake``: serve a fake upstream until SIGINT or SIGTERM (benches, demos,
``../shared/routing-eval/replay.py``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from router.fake.server import FakeUpstream

__all__ = ["main"]


async def _serve(
    host: str, port: int, event_delay: float, ping_every: int, api_keys: list[str] | None
) -> None:
    # Long benchmark runs would otherwise keep every request in memory.
    fake = FakeUpstream(
        api_keys=api_keys,
        default_event_delay=event_delay,
        ping_every=ping_every,
        history_limit=1000,
    )
    url = await fake.start(host, port)
    print(f"listening on {url}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    """Serves a fake upstream until killed (SIGINT or SIGTERM).

    Prints ``listening on http://HOST:PORT`` (flushed) once ready::

        python -m router.fake --port 9001
        python -m router.fake --port 0 --event-delay 0.01 --api-key sk-test

    Args:
        argv: Command-line arguments; None reads ``sys.argv``.
    """
    parser = argparse.ArgumentParser(
        prog="python -m router.fake", description="Fake Anthropic Messages API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--event-delay", type=float, default=0.0, help="seconds between SSE events")
    parser.add_argument(
        "--ping-every",
        type=int,
        default=0,
        help="also send a ping after every N events (0: only the first)",
    )
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help="accept only this key (repeatable); default: any non-empty key",
    )
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.host, args.port, args.event_delay, args.ping_every, args.api_keys))
