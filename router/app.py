"""The application factory: routes, lifespan-owned resources and the error handler."""

from __future__ import annotations

import gc
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post, route
from litestar.exceptions import HTTPException, NotFoundException
from litestar.handlers import asgi
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE

from router.accounting.account import Books
from router.accounting.ledger import Ledger, ledger_path
from router.accounting.ledger_files import LedgerError, LedgerFiles
from router.accounting.metrics import Metrics, use_multiprocess
from router.budgets import Budgets
from router.config import Config
from router.config_file import ConfigError
from router.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PermissionDenied,
    RequestTooLarge,
    RouterError,
    error_response,
    new_request_id,
)
from router.explain import explain
from router.parse import header_map, require_api_key
from router.pipeline import Endpoint, RouterState, proxy
from router.reload import watching
from router.routing.factor import FactorLearner
from router.routing.rules import Policy, load_policy
from router.routing.tokens import TokenCounter
from router.settings import Settings
from router.state import opened_store
from router.upstream.pool import Upstream
from router.upstream.resilience import Breakers, Gate, RetryBudget


def _state(scope: dict[str, Any]) -> RouterState:
    state: RouterState = scope["app"].state.router
    return state


def _proxied(path: str, endpoint: Endpoint) -> Any:
    async def handler(scope: Any, receive: Any, send: Any) -> None:
        # Litestar matches routes after folding repeated slashes, but the upstream gets the path
        # as written ("/v1//messages"), which is no endpoint of it: such a path ends here.
        if b"//" in (scope.get("raw_path") or b"").partition(b"?")[0]:
            raise NotFoundException()
        await proxy(_state(scope), endpoint, scope, receive, send)

    return asgi(path, copy_scope=False, name=f"proxy_{endpoint.value}")(handler)


def _proxied_tree(root: str, endpoint: Endpoint) -> Any:
    """Proxy ``root`` and everything under it (``/v1/models/{id}``).

    A mount, because Litestar's ASGI handlers cannot take path parameters; the mount strips the
    prefix from ``scope["path"]``, so it is put back before forwarding.
    """

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        raw = scope.get("raw_path") or (root + scope["path"]).encode("latin-1")
        path = raw.decode("latin-1").partition("?")[0]
        # Only the list and one model by id: nothing else under the prefix reaches upstream
        # ("/v1/modelsX", "/v1/models/../../v1/organizations", "/v1/models/a/b").
        if not _UNDER_MODELS.fullmatch(path):
            raise NotFoundException()
        scope["path"] = path
        await proxy(_state(scope), endpoint, scope, receive, send)

    return asgi(root, is_mount=True, copy_scope=True, name=f"proxy_{endpoint.value}")(handler)


@get("/metrics")
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus exposition: summed over all workers when there are several; budget gauges
    read from the store now."""
    state: RouterState = request.app.state.router
    await state.budgets.refresh(state.metrics)
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)


@get("/v1/router/budgets")
async def budgets_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Every budget's spend and limits, as JSON: for an admin key (``keys.admin``) only."""
    state: RouterState = request.app.state.router
    headers = header_map(request.scope["headers"])
    require_api_key(headers)
    if not state.budgets.keyring.is_admin(headers):
        raise PermissionDenied("GET /v1/router/budgets needs an admin key (keys.admin in "
                               "router.yaml)")
    report = await state.budgets.report()
    return Response(msgspec.json.encode(report), media_type="application/json")


@route("/api/hello", http_method=["GET", "HEAD"], sync_to_thread=False)
def hello() -> dict[str, str]:
    """Claude Code's start-up probe: answered here, whatever the upstream's state."""
    return {"status": "ok"}


@get("/healthz", sync_to_thread=False)
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@get("/readyz", sync_to_thread=False)
def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """The config is loaded and the upstream client is open."""
    state: RouterState = request.app.state.router
    ready = state.upstream.ready
    body = {
        "status": "ready" if ready else "starting",
        "config": state.policy.loaded.source,
        "config_sha256": state.policy.loaded.sha256,
    }
    return Response(body, status_code=200 if ready else HTTP_503_SERVICE_UNAVAILABLE)


@post("/v1/router/explain", status_code=200)
async def explain_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Explain the routing of a Messages body without calling upstream."""
    state: RouterState = request.app.state.router
    report = await explain(await request.body(), header_map(request.scope["headers"]), state)
    return Response(msgspec.json.encode(report), media_type="application/json")


def _rendered(err: RouterError, request_id: str | None = None) -> Response[bytes]:
    """A Litestar response of :func:`router.errors.error_response`."""
    rendered = error_response(err, request_id or new_request_id())
    return Response(rendered.body, status_code=rendered.status, media_type="application/json",
                    headers={k: v for k, v in rendered.header_dict().items()
                             if k not in ("content-type", "content-length")})


def _router_error(request: Request[Any, Any, Any], exc: RouterError) -> Response[bytes]:
    """Render the proxy's own errors raised in ordinary handlers (explain)."""
    return _rendered(exc)


def _anthropic_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Render Litestar's own errors (unknown path, wrong method, bad body) in Anthropic's shape,
    through the same renderer as the proxy's (a 405 keeps its ``Allow``)."""
    status = exc.status_code
    headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
    err: RouterError
    if status == 404:
        err = NotFound(f"{request.method} {request.url.path} not found")
    elif status == 405:
        err = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}",
                               allow=headers.get("allow", "GET"))
    elif status == 413:
        err = RequestTooLarge(exc.detail)
    elif status < 500:
        err = InvalidRequest(exc.detail)
    else:
        err = RouterError(exc.detail)
    return _rendered(err)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Log an unexpected failure and answer a retryable 500 that reveals nothing of it."""
    rid = new_request_id()
    logging.getLogger("router.app").error(
        {"event": "internal_error", "request_id": rid, "path": request.url.path}, exc_info=exc)
    return _rendered(RouterError("internal error in the routing proxy"), rid)


_UNDER_MODELS = re.compile(r"/v1/models(/(?!\.\.?$)[A-Za-z0-9._:@-]+)?/?")

_FAST_PATHS = {
    "/v1/messages": Endpoint.MESSAGES,
    "/v1/messages/count_tokens": Endpoint.COUNT_TOKENS,
}


class RouterApp:
    """The ASGI app: the two Messages endpoints go straight to the pipeline, everything else
    (models, explain, metrics, health, the lifespan, error pages) through Litestar.

    The hot path skips Litestar's routing and middleware, which cost a measurable share of the
    proxy's time per request and do nothing there: the pipeline already answers every error
    in Anthropic's shape.
    """

    def __init__(self, litestar: Litestar) -> None:
        self.litestar = litestar

    @property
    def state(self) -> Any:
        """Litestar's application state (``state.router`` is the worker's RouterState)."""
        return self.litestar.state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        endpoint = _FAST_PATHS.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.litestar(scope, receive, send)
            return
        scope["app"] = self.litestar
        await proxy(self.litestar.state.router, endpoint, scope, receive, send)


GC_YOUNG_THRESHOLD = 20_000
"""Allocations between collections of the youngest generation (Python's default: 700)."""


@contextmanager
def steady_gc() -> Iterator[None]:
    """Collect garbage for a server's steady state while the block runs, as before after it.

    What start-up loaded (modules, the config, the token tables) lives as long as the worker:
    frozen, full collections no longer walk it (~70k objects, ~25 ms each). A request allocates
    a few hundred short-lived objects that reference counting frees; collecting the youngest
    generation every 700 allocations found little and cost ~5% of a busy worker's CPU, so it
    runs after 20,000. Cycles are still collected, in bounded batches.
    """
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def _ledger_files(config: Config) -> LedgerFiles | None:
    """The ledger's files, or None when it is off or its file cannot be used: the ledger
    records the traffic for planning, never a reason to refuse serving it (logged, with what
    to change)."""
    if not config.ledger.enabled:
        return None
    path = ledger_path(config)
    try:
        return LedgerFiles(path, config.ledger)
    except (LedgerError, OSError, sqlite3.Error) as err:
        logging.getLogger("router.ledger").error(
            {"event": "ledger_unavailable", "path": str(path), "error": str(err),
             "fix": "set ledger.dir to a writable directory, or ledger.enabled: false"})
        return None


def create_app(settings: Settings | None = None, policy: Policy | None = None) -> RouterApp:
    """Build the proxy application.

    Args:
        settings: how to run; None reads them from the environment (for
            ``uvicorn --factory router.app:create_app``). ``settings.config_path`` is the file
            watched and reloaded (None: no reload).
        policy: a compiled config (``settings.overrides`` are applied to it too); None loads
            the one ``settings`` name.
    """
    settings = Settings.from_env() if settings is None else settings
    if policy is None:
        policy = load_policy(settings.config_path, overrides=settings.overrides)
    else:
        policy = policy.with_config(settings.overrides.applied(policy.config))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        config = policy.config
        upstream = Upstream(config.upstream)
        await upstream.open()
        learner = FactorLearner(priors={t.model: t.token_factor for t in config.tiers.values()})
        if settings.multiprocess_dir:
            use_multiprocess(settings.multiprocess_dir)
        metrics = Metrics(settings.multiprocess_dir)
        books = Books(metrics, learner, ledger=Ledger(
            metrics, learner, max_pending=config.ledger.max_pending,
            flush_seconds=config.ledger.flush_seconds, files=_ledger_files(config)))
        books.configure(policy)

        def fell_back(backend: str, error: BaseException) -> None:
            books.metrics.bound(books.metrics.state_errors, backend).inc()

        try:
            async with opened_store(config.state, on_fallback=fell_back) as store:
                # The environment is read here, once: managed mode's upstream keys.
                budgets = Budgets(store, config, settings.environ, fell_back,
                                  policy.loaded.source)
                state = RouterState(
                    policy=policy,
                    upstream=upstream,
                    counter=TokenCounter.load(settings.tiktoken_file),
                    learner=learner,
                    store=store,
                    books=books,
                    breakers=Breakers(config.upstream.breaker),
                    budget=RetryBudget(config.upstream.retry_budget),
                    gate=Gate(config.server.max_in_flight, config.server.max_buffered_bytes),
                    budgets=budgets,
                )
                app.state.router = state

                def install(new: Policy) -> None:
                    try:
                        budgets.configure(new.config, new.loaded.source)
                    except ConfigError as err:
                        # Keys without their upstream key would fail every request: keep the
                        # config that works.
                        logging.getLogger("router.reload").error(
                            {"event": "config_reload", "result": "error",
                             "source": err.source, "problems": err.problems})
                        return
                    books.configure(new)
                    state.policy = new

                def counted(ok: bool) -> None:
                    books.metrics.reloads.labels("ok" if ok else "error").inc()

                assert books.ledger is not None
                # The live config's other files (its keys file, its shadow candidate) reload it.
                async with books.ledger.running(), watching(
                        settings.config_path, install, config.server.reload_poll_seconds,
                        counted, lambda: state.policy.loaded.files, settings.overrides):
                    with steady_gc():
                        yield
        finally:
            await upstream.close()

    return RouterApp(Litestar(
        route_handlers=[
            _proxied("/v1/messages", Endpoint.MESSAGES),
            _proxied("/v1/messages/count_tokens", Endpoint.COUNT_TOKENS),
            _proxied_tree("/v1/models", Endpoint.MODELS),
            explain_endpoint,
            budgets_endpoint,
            metrics_endpoint,
            healthz,
            readyz,
            hello,
        ],
        lifespan=[lifespan],
        exception_handlers={
            RouterError: _router_error,
            HTTPException: _anthropic_error,
            Exception: _internal_error,
        },
        openapi_config=None,
        logging_config=None,
        request_max_body_size=policy.config.server.max_body_bytes,
    ))
