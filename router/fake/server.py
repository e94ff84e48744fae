"""The fake's HTTP server: aiohttp routes, the scripted queue, and the conversation state.

``FakeUpstream`` serves the Messages API on loopback (spec §1, §8), plus two admin routes for
tests and scripts, which need no key and are not recorded:

* ``POST /_fake/clock`` with ``{"advance": SECONDS}`` moves the cache clock forward (TTL
  expiry without sleeping); ``GET /_fake/clock`` shows the offset so far.
* ``POST /_fake/reset`` empties the prompt cache.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import threading
import uuid
from collections import deque
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import msgspec
from aiohttp import web

from router.fake.behaviours import (
    DEFAULT_MESSAGES,
    KEY_HEADER,
    STATUS_FOR_TYPE,
    Behaviour,
    Drop,
    Fail,
    Malformed,
    Received,
    Reply,
    Stall,
    StreamError,
)
from router.fake.cache import Clock, PromptCache
from router.fake.catalogue import find_model, model_info, models_page
from router.fake.checks import (
    check_body,
    check_capabilities,
    check_context,
    check_credentials,
    wanted_thinking,
)
from router.fake.errors import Invalid, invalid_request
from router.fake.history import check_history
from router.fake.ids import random_id
from router.fake.ledger import Ledger
from router.fake.prompt import estimate_input_tokens, read_prompt
from router.fake.replies import build_answer
from router.fake.signatures import Signer
from router.fake.sse import answer_events, reset, write_stream

__all__ = ["FakeUpstream"]

# The real API refuses bodies over 32 MB with a 413 (spec §1.1).
_MAX_BODY = 32 * 1024 * 1024
# Python's http module has no phrase for 529; an empty reason phrase is legal but some
# clients print it, so give it the one the API's edge uses.
_REASONS: Mapping[int, str] = MappingProxyType({529: "Overloaded"})
_JSON = "application/json"


def _scope_key(api_key: str) -> str:
    # The cache is per key, but the key itself is never kept.
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


def _betas(request: web.Request) -> frozenset[str]:
    values = request.headers.getall("anthropic-beta", [])
    return frozenset(part.strip() for value in values for part in value.split(",") if part)


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _ratelimit_headers(usage: Mapping[str, Any]) -> dict[str, str]:
    reset_at = _rfc3339(datetime.now(UTC) + timedelta(seconds=1))
    used_in = int(usage.get("input_tokens") or 0)
    used_out = int(usage.get("output_tokens") or 0)
    tokens_limit, in_limit, out_limit = 2_000_000, 1_600_000, 400_000

    def remaining(limit: int, used: int) -> str:
        # The API rounds the remaining token budget to the nearest thousand (spec §2.2).
        return str(max(0, round((limit - used) / 1000) * 1000))

    return {
        "anthropic-ratelimit-requests-limit": "4000",
        "anthropic-ratelimit-requests-remaining": "3999",
        "anthropic-ratelimit-requests-reset": reset_at,
        "anthropic-ratelimit-tokens-limit": str(tokens_limit),
        "anthropic-ratelimit-tokens-remaining": remaining(tokens_limit, used_in + used_out),
        "anthropic-ratelimit-tokens-reset": reset_at,
        "anthropic-ratelimit-input-tokens-limit": str(in_limit),
        "anthropic-ratelimit-input-tokens-remaining": remaining(in_limit, used_in),
        "anthropic-ratelimit-input-tokens-reset": reset_at,
        "anthropic-ratelimit-output-tokens-limit": str(out_limit),
        "anthropic-ratelimit-output-tokens-remaining": remaining(out_limit, used_out),
        "anthropic-ratelimit-output-tokens-reset": reset_at,
    }


class FakeUpstream:
    """An HTTP server on loopback that imitates api.anthropic.com.

    Every ``POST /v1/messages`` consumes one scripted behaviour (FIFO), or ``Reply()`` when
    the queue is empty. ``Fail``, ``Malformed`` and ``Drop(after_events=None)`` act before
    the request is validated (like a failure in front of the API); ``Reply``,
    ``StreamError`` and ``Drop(after_events=N)`` act only on requests that pass validation,
    which includes the model's capabilities and the conversation rules of spec §6.3.

    ``received``, ``billed``, ``script()``, ``clear()`` and ``advance_clock()`` are safe to
    use from any thread.
    """

    def __init__(
        self,
        *,
        api_keys: Collection[str] | None = None,
        default_event_delay: float = 0.0,
        ping_every: int = 0,
        history_limit: int | None = None,
        clock: Callable[[], float] | None = None,
        signing_key: bytes | None = None,
    ) -> None:
        """Creates a stopped fake.

        Args:
            api_keys: Accepted API keys; None accepts any non-empty key.
            default_event_delay: Seconds between SSE events when the Reply sets none.
            ping_every: If > 0, also send a ping after every this many other events.
            history_limit: Keep at most this many ``received``/``billed`` records (oldest
                dropped), so long benchmark runs stay bounded; None keeps all.
            clock: The prompt cache's time source in seconds; None uses ``time.monotonic``.
                Either way ``advance_clock`` moves it forward.
            signing_key: The thinking-signature secret; None draws a random one, so only
                this fake can verify its signatures.
        """
        self._api_keys = frozenset(api_keys) if api_keys is not None else None
        self._default_event_delay = default_event_delay
        self._ping_every = ping_every
        self._lock = threading.Lock()
        self._queue: deque[Behaviour] = deque()
        self._keyed: dict[str, deque[Behaviour]] = {}
        self._ledger = Ledger(history_limit)
        self._clock = Clock(clock)
        self._cache = PromptCache(self._clock)
        self._signer = Signer(signing_key)
        self._org_id = str(uuid.uuid4())
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    # ---- test-facing API

    @property
    def received(self) -> list[Received]:
        """A snapshot of every API request received, in order, across all endpoints."""
        return self._ledger.received

    @property
    def billed(self) -> list[dict[str, Any]]:
        """A snapshot of the usage of every message answer actually produced.

        A 200 JSON answer contributes its usage. A stream contributes the cumulative usage
        as of the last ``message_delta`` sent, or of ``message_start`` if it was cut before
        any ``message_delta``; a stream cut before ``message_start`` contributes nothing.
        """
        return self._ledger.billed

    @property
    def sent(self) -> list[bytes]:
        """A snapshot of the body bytes of every message answer written (JSON or SSE), in order.

        For a stream, the bytes written up to its end or its cut; tests compare them with what
        a client received through the proxy.
        """
        return self._ledger.sent

    def script(self, *behaviours: Behaviour) -> None:
        """Queues behaviours for the next ``POST /v1/messages`` requests, one each."""
        with self._lock:
            self._queue.extend(behaviours)

    def script_for(self, key: str, *behaviours: Behaviour) -> None:
        """Queues behaviours for the next requests carrying ``x-fake-key: key``, one each, before
        the shared queue; once they are used up, such requests take from the shared queue."""
        with self._lock:
            self._keyed.setdefault(key, deque()).extend(behaviours)

    def clear(self) -> None:
        """Forgets received requests, billed usage, queued behaviours and the prompt cache."""
        with self._lock:
            self._queue.clear()
            self._keyed.clear()
        self._ledger.clear()
        self._cache.clear()

    def advance_clock(self, seconds: float) -> float:
        """Moves the prompt cache's clock forward; returns the total offset so far."""
        return self._clock.advance(seconds)

    def cached_prefixes(self, api_key: str, model: str) -> int:
        """Returns how many unexpired prefixes the cache holds for a key on a model."""
        spec = find_model(model)
        return self._cache.entries((_scope_key(api_key), spec.id if spec else model))

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:PORT``.

        Raises:
            RuntimeError: The fake is not started.
        """
        if self._url is None:
            raise RuntimeError("FakeUpstream is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Starts serving; port 0 picks a free port.

        Returns:
            The base URL.
        """
        if self._runner is not None:
            raise RuntimeError("FakeUpstream is already started")
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a stalled handler dies with its client instead of holding
        # stop() up; the short shutdown_timeout keeps test teardown fast.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._runner = runner
        self._url = f"http://{shown}:{bound_port}"
        return self._url

    async def stop(self) -> None:
        """Stops serving and closes open connections; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # ---- responses

    def _headers(self, extra: Mapping[str, str] | None = None, **more: str) -> dict[str, str]:
        headers = {"request-id": random_id("req_"), "anthropic-organization-id": self._org_id}
        headers.update(more)
        for key, value in (extra or {}).items():
            # Case-insensitive override so a scripted "Retry-After" replaces "retry-after".
            for existing in [k for k in headers if k.lower() == key.lower()]:
                del headers[existing]
            if value != "":
                headers[key] = value
        return headers

    def _json(self, payload: Any, extra: Mapping[str, str] | None = None) -> web.Response:
        return web.Response(body=msgspec.json.encode(payload),
                            headers=self._headers({"Content-Type": _JSON, **(extra or {})}))

    def _error(
        self,
        status: int,
        error_type: str,
        message: str,
        extra: Mapping[str, str] | None = None,
    ) -> web.Response:
        defaults: dict[str, str] = {"Content-Type": _JSON}
        if status == 429:
            defaults["retry-after"] = "1"
        headers = self._headers({**defaults, **(extra or {})})
        # The body repeats the header's request id, as the real API does.
        request_id = next((v for k, v in headers.items() if k.lower() == "request-id"), None)
        payload: dict[str, Any] = {
            "type": "error",
            "error": {"type": error_type, "message": message},
        }
        if request_id is not None:
            payload["request_id"] = request_id
        return web.Response(status=status, reason=_REASONS.get(status),
                            body=msgspec.json.encode(payload), headers=headers)

    # ---- dispatch

    def _record(self, request: web.Request, body: bytes) -> None:
        headers = [
            (key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for key, value in request.raw_headers
        ]
        self._ledger.receive(Received(method=request.method, path=request.path,
                                      query=request.rel_url.raw_query_string, headers=headers,
                                      body=body))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._record(request, b"")
            return self._error(413, "request_too_large", DEFAULT_MESSAGES[413])
        method, path = request.method, request.path
        try:
            if path.startswith("/_fake/"):
                return self._admin(method, path, body)
            self._record(request, body)
            if path == "/v1/messages" and method == "POST":
                return await self._messages(request, body)
            if path == "/v1/messages/count_tokens" and method == "POST":
                return self._count_tokens(request, body)
            if path == "/v1/models" and method == "GET":
                return self._list_models(request)
            if path.startswith("/v1/models/") and method == "GET" and path.count("/") == 3:
                return self._get_model(request, path.removeprefix("/v1/models/"))
            return self._error(404, "not_found_error", "Not Found")
        except Invalid as exc:
            return self._error(exc.status, exc.error_type, exc.message)

    def _admin(self, method: str, path: str, raw: bytes) -> web.Response:
        if path == "/_fake/clock" and method == "GET":
            return self._json({"offset": self._clock.offset})
        if path == "/_fake/clock" and method == "POST":
            try:
                seconds = msgspec.json.decode(raw or b"{}").get("advance")
            except (msgspec.DecodeError, AttributeError):
                seconds = None
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
                raise invalid_request("advance: Input should be a number of seconds >= 0")
            return self._json({"offset": self.advance_clock(float(seconds))})
        if path == "/_fake/reset" and method == "POST":
            self._cache.clear()
            return self._json({"reset": True})
        return self._error(404, "not_found_error", "Not Found")

    # ---- /v1/messages

    def _next_behaviour(self, request: web.Request) -> Behaviour:
        key = request.headers.get(KEY_HEADER)
        with self._lock:
            if key is not None and self._keyed.get(key):
                keyed = self._keyed[key]
                behaviour = keyed.popleft()
                if not keyed:
                    del self._keyed[key]
                return behaviour
            return self._queue.popleft() if self._queue else Reply()

    async def _messages(self, request: web.Request, raw: bytes) -> web.StreamResponse:
        behaviour = self._next_behaviour(request)
        while isinstance(behaviour, Stall):
            await asyncio.sleep(behaviour.seconds)
            behaviour = behaviour.then if behaviour.then is not None else Reply()
        if isinstance(behaviour, Fail):
            return self._error(
                behaviour.status, behaviour.error_type, behaviour.message, behaviour.headers
            )
        if isinstance(behaviour, Malformed):
            return web.Response(
                status=behaviour.status,
                reason=_REASONS.get(behaviour.status),
                body=behaviour.body,
                headers=self._headers({"Content-Type": behaviour.content_type}),
            )
        if isinstance(behaviour, Drop) and behaviour.after_events is None:
            reset(request)
            return web.Response()

        version, key = check_credentials(request.headers, self._api_keys)
        body, spec = check_body(raw, version, needs_max_tokens=True)
        betas = _betas(request)
        check_capabilities(body, spec, betas)
        prompt = read_prompt(body)
        thinking = body.get("thinking")
        check_history(body["messages"], spec.id,
                      thinking if isinstance(thinking, Mapping) else None, self._signer)
        check_context(prompt.total, body["max_tokens"], spec.context_window(betas))
        stream = bool(body.get("stream", False))
        if isinstance(behaviour, StreamError) and not stream:
            status = STATUS_FOR_TYPE.get(behaviour.error_type, 500)
            return self._error(status, behaviour.error_type, behaviour.message)

        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        cache = self._cache.use((_scope_key(key), spec.id), prompt)
        answer = build_answer(body, reply, model_id=spec.id, thinks=wanted_thinking(body, spec),
                              signer=self._signer, cache=cache)
        delay = reply.event_delay or self._default_event_delay
        headers = self._headers(reply.headers, **_ratelimit_headers(answer.usage))
        encoded = msgspec.json.encode(answer.message)
        if isinstance(behaviour, Drop) and not stream:
            response = web.StreamResponse(status=200, headers=headers)
            response.content_type = _JSON
            response.content_length = len(encoded)
            await response.prepare(request)  # sends the status line and headers at once
            reset(request)
            return response
        if not stream:
            if request.transport is None or request.transport.is_closing():
                return web.Response()
            self._ledger.bill(copy.deepcopy(answer.usage))
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = _JSON
            self._ledger.record_sent(encoded)
            return web.Response(body=encoded, headers=headers)

        cut: int | None = None
        error: StreamError | None = None
        if isinstance(behaviour, Drop):
            cut = behaviour.after_events
        elif isinstance(behaviour, StreamError):
            cut, error = behaviour.after_events, behaviour
        elif reply.stall_after is not None:
            cut = reply.stall_after
        events = answer_events(answer, reply.pad_json, self._ping_every)
        return await write_stream(request, headers, events, delay=delay, cut=cut, error=error,
                                  ledger=self._ledger, stall=reply.stall_after is not None)

    # ---- other endpoints

    def _count_tokens(self, request: web.Request, raw: bytes) -> web.Response:
        version, _ = check_credentials(request.headers, self._api_keys)
        body, _ = check_body(raw, version, needs_max_tokens=False)
        return self._json({"input_tokens": estimate_input_tokens(body)})

    def _list_models(self, request: web.Request) -> web.Response:
        check_credentials(request.headers, self._api_keys)
        query = request.rel_url.query
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            raise invalid_request("limit: Input should be a valid integer") from None
        lifecycles = set(query.getall("lifecycle[]", [])) | set(query.getall("lifecycle", []))
        return self._json(models_page(limit, query.get("after_id"), query.get("before_id"),
                                      lifecycles))

    def _get_model(self, request: web.Request, model_id: str) -> web.Response:
        check_credentials(request.headers, self._api_keys)
        spec = find_model(model_id)
        if spec is None:
            raise Invalid(404, "not_found_error", f"model: {model_id}")
        return self._json(model_info(spec))
