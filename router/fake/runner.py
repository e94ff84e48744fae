"""Running the fake from synchronous code: its own thread and event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from router.fake.server import FakeUpstream

__all__ = ["running_fake"]


@contextlib.contextmanager
def running_fake(**kwargs: Any) -> Iterator[FakeUpstream]:
    """Runs a FakeUpstream in a background thread with its own event loop.

    For synchronous tests; ``script()``, ``received`` and ``billed`` are thread-safe.

    Args:
        **kwargs: Passed to :class:`FakeUpstream`; ``host`` and ``port`` go to ``start()``.

    Yields:
        The started fake; it is stopped and its thread joined on exit.
    """
    host = kwargs.pop("host", "127.0.0.1")
    port = kwargs.pop("port", 0)
    fake = FakeUpstream(**kwargs)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(fake.start(host, port))
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="fake-upstream", daemon=True)
    thread.start()
    ready.wait()
    if failure:
        thread.join()
        loop.close()
        raise failure[0]
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
