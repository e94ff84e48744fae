"""What keeps answers coming when the upstream struggles: retry rules, circuit breakers and
the admission gate (backpressure).

Retries themselves run in :mod:`router.upstream.forward` with tenacity; this module decides
*whether* and *how long*, from the answer's status and headers, so the rules are testable alone.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router.config import BreakerConfig, RetryConfig
from router.errors import Overloaded

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
CLIENT_FAULTS = frozenset({400, 401, 402, 403, 404, 405, 413, 422})
"""Never retried, even when the upstream says ``x-should-retry: true``: resending cannot help."""


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
    return status in RETRYABLE_STATUSES or status == 408


def retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
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


def backoff(retry: RetryConfig, retries_so_far: int, rng: Callable[[], float] = random.random
            ) -> float:
    """Exponential backoff with jitter, as the SDKs do: ``min(base·2ⁿ, max)·(1 − 0.25·rand)``."""
    base = retry.base_delay or 0.5
    cap = retry.max_delay or 8.0
    return min(base * 2.0**retries_so_far, cap) * (1 - 0.25 * rng())


@dataclass
class _Circuit:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


class Breakers:
    """One circuit breaker per upstream model.

    Closed: requests flow. After ``failures`` consecutive failures it opens: the model is skipped
    (requests go to the fallback) for ``cooldown`` seconds. Then it lets one probe through; the
    probe's success closes it, its failure opens it again.
    """

    def __init__(self, config: BreakerConfig, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.config = config
        self._clock = clock
        self._circuits: dict[str, _Circuit] = {}

    def allows(self, model: str) -> bool:
        """Whether a request may go to ``model`` now (taking the probe slot if half-open)."""
        circuit = self._circuits.get(model)
        if circuit is None or circuit.opened_at is None:
            return True
        if self._clock() - circuit.opened_at < self.config.cooldown or circuit.probing:
            return False
        circuit.probing = True
        return True

    def retry_in(self, model: str) -> float:
        """Seconds until ``model`` may be probed again (0 if it is not open)."""
        circuit = self._circuits.get(model)
        if circuit is None or circuit.opened_at is None:
            return 0.0
        return max(0.0, self.config.cooldown - (self._clock() - circuit.opened_at))

    def succeeded(self, model: str) -> None:
        """Record a good answer: the circuit closes."""
        self._circuits.pop(model, None)

    def settle(self, model: str) -> None:
        """Free the probe slot if a request that took it ended neither well nor badly (the
        client left, a 4xx of its own, a retry-after not waited for): the next one probes."""
        circuit = self._circuits.get(model)
        if circuit is not None:
            circuit.probing = False

    def failed(self, model: str) -> bool:
        """Record a failed attempt; return True if this opened the circuit."""
        circuit = self._circuits.setdefault(model, _Circuit())
        circuit.failures += 1
        if circuit.probing or (circuit.opened_at is None
                               and circuit.failures >= self.config.failures):
            circuit.opened_at = self._clock()
            circuit.probing = False
            return True
        return False


class Gate:
    """Admission control: bounded requests and request-body bytes in flight, per worker.

    Past either bound the proxy answers 529 at once rather than queue without limit, so memory
    stays bounded under a flood of large bodies.
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
                             headers={"retry-after": "1"})
        self.requests += 1

    def leave(self) -> None:
        """A request admitted by :meth:`enter` has finished."""
        self.requests -= 1

    def reserve(self, size: int) -> None:
        """Hold ``size`` more body bytes, or raise :class:`Overloaded`."""
        if self.bytes + size > self.max_bytes and self.bytes > 0:
            raise Overloaded("the routing proxy is holding too many request bytes; retry",
                             headers={"retry-after": "1"})
        self.bytes += size

    def release(self, size: int) -> None:
        """Give back bytes held by :meth:`reserve`."""
        self.bytes -= size
