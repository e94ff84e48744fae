"""Shared fixtures: a faithful fake upstream and the real proxy, both on loopback ports."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import uvicorn
from litestar import Litestar

from router.app import create_app
from router.config import LoadedConfig, RetryConfig, default_config_text
from router.fake import FakeUpstream, running_fake
from router.pipeline import RouterState
from router.routing.rules import Policy, parse_policy
from tests.node_clients import NodeClients, ensure_clients

API_KEY = "sk-ant-test-0123456789abcdef"
T = TypeVar("T")


POLICY_MARK = "# ---- routing policy"
PASSTHROUGH = "default: requested\n"
"""A policy with no rules: every request keeps its model (tier names still map to models)."""


def config_text(upstream_url: str, policy_yaml: str | None = None) -> str:
    """Return the default config text pointed at ``upstream_url``; with ``policy_yaml``, that
    replaces the default's routing policy (its ``default:`` and ``rules:``)."""
    text = default_config_text().replace("https://api.anthropic.com", upstream_url)
    if policy_yaml is not None:
        text = text[: text.index(POLICY_MARK)] + policy_yaml
    return text


def make_policy(upstream_url: str, policy_yaml: str | None = PASSTHROUGH) -> Policy:
    """Return a policy pointed at ``upstream_url``: passthrough unless ``policy_yaml`` is given
    (``None`` keeps the default policy of router.yaml)."""
    return parse_policy(config_text(upstream_url, policy_yaml), "<test>")


def with_section(policy: Policy, section: str, **changes: Any) -> Policy:
    """Return ``policy`` with some settings of one section changed (``upstream``, ``server``)."""
    config = policy.config
    replaced = msgspec.structs.replace(getattr(config, section), **changes)
    loaded = policy.loaded
    new = LoadedConfig(msgspec.structs.replace(config, **{section: replaced}), loaded.source,
                       loaded.sha256, loaded.lines)
    return Policy(new, policy.rules)


def without_retries(policy: Policy, **timeouts: float) -> Policy:
    """Return ``policy`` with one attempt per request and no fallbacks, so upstream errors reach
    the client as they are; ``timeouts`` (e.g. ``first_event=0.3``) apply to every tier."""
    config = policy.config
    one = RetryConfig(attempts=1)
    tiers = {
        name: msgspec.structs.replace(
            tier, fallbacks=(), retry=one,
            timeouts=msgspec.structs.replace(tier.timeouts, **timeouts),
        )
        for name, tier in config.tiers.items()
    }
    upstream = msgspec.structs.replace(config.upstream, retry=one)
    loaded = policy.loaded
    new = msgspec.structs.replace(config, tiers=tiers, upstream=upstream)
    return Policy(LoadedConfig(new, loaded.source, loaded.sha256, loaded.lines), policy.rules)


@dataclass
class RunningProxy:
    """A proxy started by :func:`running_proxy`, for tests that look inside it."""

    app: Litestar
    loop: asyncio.AbstractEventLoop

    @property
    def state(self) -> RouterState:
        """The worker's state (gate, breakers, metrics, upstream pool)."""
        state: RouterState = self.app.state.router
        return state

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the proxy's own event loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)


RUNNING: dict[str, RunningProxy] = {}
"""Every running proxy by base URL."""


@contextmanager
def running_proxy(policy: Policy, config_path: str | None = None) -> Iterator[str]:
    """Run the real app under uvicorn in a background thread; yield its base URL."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets it knows are TCP, and
    # without it every keep-alive answer after the first waits ~40 ms for Nagle.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(policy, config_path)
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve(sockets=[sock])

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("proxy failed to start")
        threading.Event().wait(0.01)
    url = f"http://127.0.0.1:{port}"
    RUNNING[url] = RunningProxy(app, loops[0])
    try:
        yield url
    finally:
        RUNNING.pop(url, None)
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's proxies keep conversation state in a directory of their own: the shipped
    default (SQLite under ~/.local/state) would carry one test's conversations into the next."""
    monkeypatch.setenv("ROUTER_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture(scope="session")
def fake_server() -> Iterator[FakeUpstream]:
    with running_fake() as fake:
        yield fake


@pytest.fixture()
def fake(fake_server: FakeUpstream) -> FakeUpstream:
    """The session's fake upstream, emptied for this test."""
    fake_server.clear()
    return fake_server


@pytest.fixture(scope="session")
def proxy_url(fake_server: FakeUpstream) -> Iterator[str]:
    """A passthrough proxy without retries, forwarding to the session's fake upstream: what the
    client gets is what the upstream said."""
    with running_proxy(without_retries(make_policy(fake_server.url))) as url:
        yield url


@pytest.fixture()
def start_proxy(fake_server: FakeUpstream) -> Iterator[Callable[..., str]]:
    """Factory: start a proxy with a routing policy (YAML), or a given compiled policy, and
    optionally a config file to hot-reload from."""
    with ExitStack() as stack:

        def start(policy_yaml: str | None = PASSTHROUGH, policy: Policy | None = None,
                  config_path: str | None = None) -> str:
            chosen = policy or make_policy(fake_server.url, policy_yaml)
            return stack.enter_context(running_proxy(chosen, config_path))

        yield start


@pytest.fixture(scope="session")
def node_clients() -> NodeClients:
    """The TypeScript SDK and the Claude Code CLI from npm, installed once (see
    ``tests/node_clients.py``)."""
    return ensure_clients()
