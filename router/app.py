"""The application factory: routes, lifespan-owned resources and the error handler."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.exceptions import HTTPException, NotFoundException
from litestar.handlers import asgi
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE

from router.config import LoadedConfig, load_config, resolve_config_path
from router.errors import error_body, new_request_id
from router.forward import Upstream
from router.pipeline import Endpoint, RouterState, proxy

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "api_error",
}


def _state(scope: dict[str, Any]) -> RouterState:
    state: RouterState = scope["app"].state.router
    return state


def _proxied(path: str, endpoint: Endpoint) -> Any:
    async def handler(scope: Any, receive: Any, send: Any) -> None:
        await proxy(_state(scope), endpoint, scope, receive, send)

    return asgi(path, copy_scope=False, name=f"proxy_{endpoint.value}")(handler)


def _proxied_tree(root: str, endpoint: Endpoint) -> Any:
    """Proxy ``root`` and everything under it (``/v1/models/{id}``).

    A mount, because Litestar's ASGI handlers cannot take path parameters; the mount strips the
    prefix from ``scope["path"]``, so it is put back before forwarding.
    """

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        rest = scope["path"].rstrip("/")
        if rest and not rest.startswith("/"):  # "/v1/modelsX" also reaches a mount
            raise NotFoundException()
        scope["path"] = root + rest
        await proxy(_state(scope), endpoint, scope, receive, send)

    return asgi(root, is_mount=True, copy_scope=True, name=f"proxy_{endpoint.value}")(handler)


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
        "config": state.loaded.source,
        "config_sha256": state.loaded.sha256,
    }
    return Response(body, status_code=200 if ready else HTTP_503_SERVICE_UNAVAILABLE)


def _anthropic_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Render Litestar's own errors (unknown path, wrong method) in Anthropic's shape."""
    status = exc.status_code
    rid = new_request_id()
    message = exc.detail if status != 404 else f"{request.method} {request.url.path} not found"
    return Response(
        error_body(_ERROR_TYPES.get(status, "api_error"), message, rid),
        status_code=status,
        media_type="application/json",
        headers={"request-id": rid},
    )


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """Log an unexpected failure and answer a retryable 500 that reveals nothing of it."""
    rid = new_request_id()
    logging.getLogger("router.app").error(
        {"event": "internal_error", "request_id": rid, "path": request.url.path},
        exc_info=exc,
    )
    return Response(
        error_body("api_error", "internal error in the routing proxy", rid),
        status_code=500,
        media_type="application/json",
        headers={"request-id": rid},
    )


def create_app(loaded: LoadedConfig | None = None) -> Litestar:
    """Build the proxy application.

    Args:
        loaded: a validated config; when None, the file from $ROUTER_CONFIG, ./router.yaml or the
            embedded default is loaded.
    """
    config = loaded or load_config(resolve_config_path(None))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        upstream = Upstream(config.config.upstream)
        await upstream.open()
        app.state.router = RouterState(loaded=config, upstream=upstream)
        try:
            yield
        finally:
            await upstream.close()

    return Litestar(
        route_handlers=[
            _proxied("/v1/messages", Endpoint.MESSAGES),
            _proxied("/v1/messages/count_tokens", Endpoint.COUNT_TOKENS),
            _proxied_tree("/v1/models", Endpoint.MODELS),
            healthz,
            readyz,
        ],
        lifespan=[lifespan],
        exception_handlers={HTTPException: _anthropic_error, Exception: _internal_error},
        openapi_config=None,
        logging_config=None,
    )
