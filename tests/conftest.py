"""Shared fixtures: a faithful fake upstream and the real proxy, both on loopback ports."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import msgspec
import pytest
import uvicorn

from router.app import create_app
from router.config import LoadedConfig, parse_config
from router.fake_upstream import FakeUpstream, running_fake

API_KEY = "sk-ant-test-0123456789abcdef"


def make_config(upstream_url: str, extra_yaml: str = "") -> LoadedConfig:
    """Return the default config pointed at ``upstream_url``, with ``extra_yaml`` appended."""
    from router.config import default_config_text

    text = default_config_text().replace("https://api.anthropic.com", upstream_url) + extra_yaml
    return parse_config(text, "<test>")


def with_upstream(loaded: LoadedConfig, **changes: Any) -> LoadedConfig:
    """Return ``loaded`` with some ``upstream`` settings changed (e.g. ``read_timeout=0.3``)."""
    config = loaded.config
    upstream = msgspec.structs.replace(config.upstream, **changes)
    return LoadedConfig(msgspec.structs.replace(config, upstream=upstream), loaded.source, "test")


@contextmanager
def running_proxy(loaded: LoadedConfig) -> Iterator[str]:
    """Run the real app under uvicorn in a background thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(loaded),
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
    )
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True
    )
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("proxy failed to start")
        threading.Event().wait(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


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
    """A proxy on the default config, forwarding to the session's fake upstream."""
    with running_proxy(make_config(fake_server.url)) as url:
        yield url


@pytest.fixture()
def start_proxy(fake_server: FakeUpstream) -> Iterator[Callable[..., str]]:
    """Factory: start a proxy with extra YAML appended to the default config."""
    with ExitStack() as stack:

        def start(extra_yaml: str = "", loaded: LoadedConfig | None = None) -> str:
            return stack.enter_context(
                running_proxy(loaded or make_config(fake_server.url, extra_yaml))
            )

        yield start
