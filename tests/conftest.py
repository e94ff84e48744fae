"""Shared fixtures and factories: a faithful fake upstream and the real proxy, both on loopback
ports; policies, feature records and raw requests made to measure; a clean environment."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import os
import socket
import threading
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import pytest
import uvicorn
from litestar import Litestar

from router import settings
from router.app import create_app
from router.config import RetryConfig
from router.config_file import default_config_text
from router.fake import FakeUpstream, running_fake
from router.pipeline import RouterState
from router.routing.features import Features
from router.routing.rules import Policy, feature_kinds, parse_policy
from router.settings import Settings
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
    return policy.with_config(msgspec.structs.replace(config, **{section: replaced}))


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
    return policy.with_config(msgspec.structs.replace(config, tiers=tiers, upstream=upstream))


_FEATURE_KINDS = feature_kinds(Features)
_ZERO: dict[str, object] = {"number": 0, "bool": False, "string": "", "strings": ()}


def make_features(**overrides: Any) -> Features:
    """Return the Features of a short, simple request to Sonnet, with ``overrides`` applied
    (every other number zero, flag false, string and list empty)."""
    fields: dict[str, Any] = {name: _ZERO[kind] for name, kind in _FEATURE_KINDS.items()}
    fields.update(complexity="simple", thinking="none", requested_model="claude-sonnet-4-6",
                  requested_tier="sonnet")
    fields.update(overrides)
    return Features(**fields)


def post(base_url: str, body: bytes, headers: dict[str, str] | None = None,
         path: str = "/v1/messages") -> tuple[int, dict[str, str], bytes]:
    """POST raw bytes with the test key; return status, headers (lower-case names) and body."""
    parts = urlsplit(base_url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    sent = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01",
            "content-type": "application/json", **(headers or {})}
    conn.request("POST", path, body=body, headers=sent)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def scrape(url: str) -> dict[str, float]:
    """Return every sample of /metrics as {'name{labels}': value}."""
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Return the sum of the samples of ``name`` whose labels include ``labels``."""
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in samples.items()
               if k.split("{")[0] == name and all(w in k for w in want))


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
PROXY_READS = frozenset(value for key, value in vars(settings).items() if key.endswith("_ENV"))
"""Every variable the proxy reads: router/settings.py is the only module that reads any. The
ROUTER_SKIP_* switches of the tests themselves are not among them, and stay."""


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts without the proxy's own variables (``ROUTER_*`` and the others
    :mod:`router.settings` reads) or an HTTP proxy: a developer's shell must not change what a
    test sees, nor send loopback traffic through a proxy. Subprocesses inherit the cleaned
    environment."""
    for name in list(os.environ):
        if name in PROXY_READS or name.upper() in PROXY_VARIABLES:
            monkeypatch.delenv(name)


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


def proxy_settings(config_path: str | None = None) -> Settings:
    """The settings a test's proxy runs with: the environment as the fixtures left it (a state
    directory of the test's, or of the session's for longer-lived proxies), and the config file
    to reload from, if any."""
    return dataclasses.replace(Settings.from_env(), config_path=config_path)


@contextmanager
def running_proxy(policy: Policy, config_path: str | None = None) -> Iterator[str]:
    """Run the real app under uvicorn in a background thread; yield its base URL."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets it knows are TCP, and
    # without it every keep-alive answer after the first waits ~40 ms for Nagle.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(proxy_settings(config_path), policy)
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


@pytest.fixture(scope="session", autouse=True)
def _session_state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Proxies that outlive one test (session and module fixtures) keep their state in this
    run's own directory, never in ~/.local/state, which other runs on the machine share."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ROUTER_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        yield


@pytest.fixture(autouse=True)
def _own_state_dir(clean_environ: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                   ) -> None:
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
