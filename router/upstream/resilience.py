"""What keeps answers coming when the upstream struggles, without adding to its load: retry
rules, the retry budget, circuit breakers, waits fitted to each request, and the admission gate.

Retries themselves run in :mod:`router.upstream.forward`; this module decides *whether*, *how
long* and *how many*, from the answer's status and headers and the worker's recent history, so
each rule is testable alone (``tests/test_resilience.py``).
"""

from __future__ import annotations

import email.utils
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgspec

from router.config import BreakerConfig, RetryBudgetConfig, RetryConfig, TimeoutsConfig
from router.errors import Overloaded

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
CLIENT_FAULTS = frozenset({400, 401, 402, 403, 404, 405, 413, 422})
"""Never retried, even when the upstream says ``x-should-retry: true``: resending cannot help."""

Clock = Callable[[], float]


def should_retry(status: int, headers: Mapping[str, str], body: bytes) -> bool:
    """Whether an upstream error answer is worth another attempt.

    ``x-should-retry`` wins when present (as in the SDKs), except for the client's own faults.
    A 429 caused by a spend limit is final: more attempts only fail the same way.
    """
    if status in CLIENT_FAULTS:
        return False
    hint = headers.get("x-should-retry", "").lower()
    if hint in ("true", "false"):
        return hint == "true"
    if status == 429 and b"spend_limit" in body:
        return False
    return status in RETRYABLE_STATUSES


def model_failed(status: int) -> bool:
    """Whether an upstream status says the *model* is failing (overloaded or broken), rather
    than something about this request or this account (a 4xx, a 429 rate limit)."""
    return status >= 500


def retry_after(headers: Mapping[str, str], now: Clock = time.time) -> float | None:
    """Seconds the upstream asked to wait (``retry-after-ms``, ``retry-after`` in seconds or as
    an HTTP date), or None."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    stamp: float = when.timestamp()
    return max(0.0, stamp - now())


def backoff(retry: RetryConfig, retries_so_far: int, rng: Clock = random.random) -> float:
    """Exponential backoff with jitter, as the SDKs do: ``min(base·2ⁿ, max)·(1 − 0.25·rand)``."""
    base = retry.base_delay or 0.5
    cap = retry.max_delay or 8.0
    return min(base * 2.0**retries_so_far, cap) * (1 - 0.25 * rng())


# --------------------------------------------------------------------------- waits


def earliest(*limits: float | None) -> float | None:
    """The soonest of some optional limits (None: no limit)."""
    given = [x for x in limits if x is not None]
    return min(given) if given else None


class Shape(msgspec.Struct, frozen=True):
    """What the waits depend on: the request's size and whether its stream may pause."""

    input_tokens: int = 0
    max_tokens: int = 0
    stream: bool = False
    may_pause: bool = False
    """Thinking or tools: the API may go quiet between blocks, pinging, for a long while."""


class Waits(msgspec.Struct, frozen=True):
    """Seconds to wait on one upstream attempt (None: no limit)."""

    connect: float | None
    first: float | None
    """From sending to a stream's first event, or to a non-streamed answer's whole body."""
    idle: float | None
    """Between two events while text is being written."""
    quiet: float | None
    """Between two events anywhere else in the stream."""


def waits_for(timeouts: TimeoutsConfig, shape: Shape) -> Waits:
    """Return the waits for a request of this shape: the first event's wait grows with the input
    (prefill), a non-streamed answer's with ``max_tokens`` too (the SDKs' own estimate of how
    long a non-streamed answer may legitimately take), and only a stream that may pause gets the
    longer ``quiet`` wait between events."""
    first = timeouts.first_event
    if first is not None:
        # Sizes are the client's claims, unchecked yet: never below zero.
        first += (timeouts.per_1k_input or 0.0) * max(0, shape.input_tokens) / 1000
        if not shape.stream:
            first += (timeouts.per_1k_output or 0.0) * max(0, shape.max_tokens) / 1000
    quiet = timeouts.quiet if shape.may_pause else timeouts.idle
    return Waits(timeouts.connect, first, timeouts.idle, quiet)


# --------------------------------------------------------------------------- the retry budget


class RetryBudget:
    """Bounds the extra upstream attempts (retries and fallbacks) of one worker.

    A token bucket: each request earns ``ratio`` of an attempt, each second ``min_per_second``,
    up to ``burst`` saved; each extra attempt spends a whole one. So under an overload that
    never ends, retries add at most ``ratio`` to the load instead of multiplying it, while a
    quiet worker (or a brief blip) still retries everything.
    """

    def __init__(self, config: RetryBudgetConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.tokens = config.burst
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.config.burst,
                          self.tokens + (now - self._last) * self.config.min_per_second)
        self._last = now

    def earn(self) -> None:
        """A request arrived: it earns its share of an extra attempt."""
        self._refill()
        self.tokens = min(self.config.burst, self.tokens + self.config.ratio)

    def spend(self) -> bool:
        """Take one extra attempt; False when the budget is spent."""
        self._refill()
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


# --------------------------------------------------------------------------- circuit breakers


class _Window:
    """Failed and good requests over the last ``seconds``, in ten time buckets."""

    __slots__ = ("_buckets", "_count", "_width")

    def __init__(self, seconds: float, buckets: int = 10) -> None:
        self._width = seconds / buckets
        self._count = buckets
        self._buckets: deque[list[int]] = deque()  # [bucket index, failed, good]

    def add(self, now: float, failed: bool) -> None:
        index = int(now // self._width)
        self._trim(index)
        if not self._buckets or self._buckets[-1][0] != index:
            self._buckets.append([index, 0, 0])
        self._buckets[-1][1 if failed else 2] += 1

    def counts(self, now: float) -> tuple[int, int]:
        """(failed, total) in the window."""
        self._trim(int(now // self._width))
        failed = sum(b[1] for b in self._buckets)
        return failed, failed + sum(b[2] for b in self._buckets)

    def _trim(self, index: int) -> None:
        while self._buckets and self._buckets[0][0] <= index - self._count:
            self._buckets.popleft()


@dataclass
class _Circuit:
    window: _Window
    opened_at: float | None = None
    probing: bool = False


@dataclass
class Breakers:
    """One circuit breaker per upstream model, opened by the failure rate of distinct requests.

    Closed: requests flow, and each one's verdict on the model (:meth:`record`) goes into a
    sliding window. When the window holds at least ``min_requests`` and ``failure_rate`` of them
    failed, the circuit opens: requests go to their fallbacks for ``cooldown`` seconds. Then one
    probe at a time goes through; its success closes the circuit, its failure reopens it.

    Only ``max_models`` circuits are kept (the least recently used go first), so requests naming
    ever new models cannot grow memory.
    """

    config: BreakerConfig
    clock: Clock = time.monotonic
    max_models: int = 256
    _circuits: OrderedDict[str, _Circuit] = field(default_factory=OrderedDict)

    def _circuit(self, model: str) -> _Circuit:
        circuit = self._circuits.get(model)
        if circuit is None:
            if len(self._circuits) >= self.max_models:
                self._circuits.popitem(last=False)
            circuit = self._circuits[model] = _Circuit(_Window(self.config.window))
        else:
            self._circuits.move_to_end(model)
        return circuit

    def is_open(self, model: str) -> bool:
        """Whether the model's circuit is open (or half-open with its probe out)."""
        circuit = self._circuits.get(model)
        return circuit is not None and circuit.opened_at is not None

    def available(self, model: str) -> bool:
        """Whether ``model`` takes requests now: its circuit is closed or due a probe (nothing is
        taken: :meth:`allows` decides when a request is sent)."""
        circuit = self._circuits.get(model)
        return circuit is None or circuit.opened_at is None or \
            self.clock() - circuit.opened_at >= self.config.cooldown

    def allows(self, model: str) -> bool:
        """Whether a request may go to ``model`` now (taking the probe slot if half-open)."""
        circuit = self._circuits.get(model)
        if circuit is None or circuit.opened_at is None:
            return True
        if self.clock() - circuit.opened_at < self.config.cooldown or circuit.probing:
            return False
        circuit.probing = True
        return True

    def record(self, model: str, *, failed: bool) -> bool:
        """Record one request's verdict on ``model``; return True if this opened the circuit.

        Called once per request and model, however many attempts the request made there.
        """
        circuit = self._circuit(model)
        now = self.clock()
        if circuit.opened_at is not None:
            if circuit.probing:
                circuit.probing = False
                if failed:
                    circuit.opened_at = now
                    return True
                self._close(circuit)
            elif not failed:
                # A request sent while the circuit was open (nowhere else to go) succeeded.
                self._close(circuit)
            return False
        circuit.window.add(now, failed)
        bad, total = circuit.window.counts(now)
        if failed and total >= self.config.min_requests and bad >= self.config.failure_rate * total:
            circuit.opened_at = now
            return True
        return False

    def release(self, model: str) -> None:
        """Free the probe slot if a request that took it ended without a verdict (the client
        left, a 429, the budget ran out): the next request probes."""
        circuit = self._circuits.get(model)
        if circuit is not None:
            circuit.probing = False

    def _close(self, circuit: _Circuit) -> None:
        circuit.opened_at = None
        circuit.window = _Window(self.config.window)

    def __len__(self) -> int:
        return len(self._circuits)


# --------------------------------------------------------------------------- admission


class Gate:
    """Admission control: bounded requests and request-body bytes in flight, per worker.

    Past either bound the proxy answers 529 at once rather than queue without limit, so memory
    stays bounded under a flood of large bodies. Bytes are held as they arrive, so a chunked
    body without a length, or a slow sender, is counted too.
    """

    def __init__(self, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.requests = 0
        self.bytes = 0

    def enter(self) -> None:
        """Admit a request, or raise :class:`Overloaded`."""
        if self.requests >= self.max_requests:
            raise Overloaded("the routing proxy is at its limit of requests in flight; retry",
                             retry_after=1)
        self.requests += 1

    def leave(self) -> None:
        """A request admitted by :meth:`enter` has finished."""
        self.requests -= 1

    def reserve(self, size: int) -> None:
        """Hold ``size`` more body bytes, or raise :class:`Overloaded`."""
        if self.bytes + size > self.max_bytes and self.bytes > 0:
            raise Overloaded("the routing proxy is holding too many request bytes; retry",
                             retry_after=1)
        self.bytes += size

    def release(self, size: int) -> None:
        """Give back bytes held by :meth:`reserve`."""
        self.bytes -= size
