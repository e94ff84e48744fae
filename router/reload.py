"""Hot reload of ``router.yaml``: on file change (polled) and on SIGHUP.

A new policy replaces the old one whole, in one assignment, so a request in flight keeps the
rules it started with and none is dropped. An invalid edit is logged and the old rules stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from router.config_file import NO_OVERRIDES, ConfigError, Overrides
from router.routing.rules import Policy, load_policy

log = logging.getLogger("router.reload")

OnReload = Callable[[str, Policy | None], None]
"""Told each attempt: ``"ok"`` with the new policy, or ``"error"`` with None."""


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def reload_policy(path: str, install: Callable[[Policy], None], trigger: str,
                  overrides: Overrides = NO_OVERRIDES) -> Policy | None:
    """Load ``path`` and install it; on any problem log it and keep the current policy.

    ``overrides`` are the start-up settings from the environment, kept across reloads.

    Returns:
        The new policy, or None if the file was rejected.
    """
    try:
        policy = load_policy(path, overrides=overrides)
    except ConfigError as err:
        log.error({"event": "config_reload", "result": "error", "trigger": trigger,
                   "source": err.source, "problems": err.problems})
        return None
    install(policy)
    log.info({"event": "config_reload", "result": "ok", "trigger": trigger, "source": path,
              "config_sha256": policy.loaded.sha256, "rules": len(policy.rules)})
    return policy


@asynccontextmanager
async def watching(
    path: str | None, install: Callable[[Policy], None], interval: float = 1.0,
    on_attempt: Callable[[bool], None] | None = None,
    also: Callable[[], tuple[str, ...]] = tuple, overrides: Overrides = NO_OVERRIDES,
) -> AsyncIterator[None]:
    """Reload the policy from ``path`` whenever the file, or one of the files ``also()`` names
    (the live config's keys file), changes or SIGHUP arrives.

    Polling a stat every ``interval`` seconds costs nothing and, unlike inotify, also sees a
    Kubernetes ConfigMap's symlink swap.
    """
    if path is None:
        yield
        return
    loop = asyncio.get_running_loop()

    def attempt(trigger: str) -> None:
        result = reload_policy(path, install, trigger, overrides)
        if on_attempt is not None:
            on_attempt(result is not None)

    def signature() -> tuple[tuple[int, int, int] | None, ...]:
        return tuple(_signature(p) for p in (path, *also()))

    async def poll() -> None:
        last = signature()
        while True:
            await asyncio.sleep(interval)
            current = signature()
            if current != last and current[0] is not None:
                attempt("file")
                last = signature()  # the new config may name other files

    task = asyncio.create_task(poll()) if interval > 0 else None
    hup = False
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        # Only the main thread may own signals; tests that run the app in a thread skip it.
        loop.add_signal_handler(signal.SIGHUP, attempt, "sighup")
        hup = True
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
