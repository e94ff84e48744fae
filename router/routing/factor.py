"""The learned token factor: how the API's real input tokens relate to the router's estimate."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping


class FactorLearner:
    """Learns, per model, how the API's real input tokens relate to this module's estimate.

    An exponential moving average of ``actual / estimated`` that starts from a prior (the config's
    ``token_factor``) and is clamped to a sane range, so one odd response (a cache hit reported
    oddly, a truncated stream) cannot swing routing. Bounded: at most ``max_models`` models are
    remembered, least recently updated dropped first. Thread-safe.
    """

    def __init__(
        self,
        *,
        prior: float = 1.0,
        priors: Mapping[str, float] | None = None,
        alpha: float = 0.05,
        low: float = 0.5,
        high: float = 3.0,
        max_models: int = 256,
        min_estimate: int = 64,
    ) -> None:
        """Create a learner.

        Args:
            prior: Where a model's factor starts before its first observation (the prior
                counts as one observation, so the first real one moves it halfway).
            priors: Per-model starting points (e.g. each tier's configured ``token_factor``),
                overriding ``prior``.
            alpha: Weight of each new observation once a model has ``1/alpha`` of them; earlier
                ones use a running mean so the factor settles quickly.
            low: Smallest factor ever returned or stored.
            high: Largest factor ever returned or stored.
            max_models: Most models tracked.
            min_estimate: Estimates below this are ignored: tiny requests are dominated by
                per-request overhead and would skew the ratio.
        """
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        if not 0 < low <= high:
            raise ValueError("need 0 < low <= high")
        self._prior = min(high, max(low, prior))
        self._priors = {m: min(high, max(low, f)) for m, f in (priors or {}).items()}
        self._alpha = alpha
        self._low = low
        self._high = high
        self._max_models = max(1, max_models)
        self._min_estimate = min_estimate
        self._state: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def observe(
        self, model: str, estimated: int, actual: int, *, prior: float | None = None
    ) -> None:
        """Record one request's estimate against the usage the API reported.

        Args:
            model: The model the request was sent to.
            estimated: This module's raw estimate (unscaled ``TokenEstimate.tokens``).
            actual: All input tokens the API reported: ``input_tokens`` plus cache reads and
                cache writes.
            prior: Starting point if this is the model's first observation (else the
                constructor's ``priors``/``prior``).
        """
        if estimated < self._min_estimate or actual <= 0:
            return
        ratio = min(self._high, max(self._low, actual / estimated))
        start = prior if prior is not None else self._priors.get(model, self._prior)
        with self._lock:
            factor, seen = self._state.pop(model, (min(self._high, max(self._low, start)), 0))
            weight = max(self._alpha, 1.0 / (seen + 2))
            factor += weight * (ratio - factor)
            self._state[model] = (min(self._high, max(self._low, factor)), seen + 1)
            if len(self._state) > self._max_models:
                self._state.popitem(last=False)

    def factor(self, model: str, default: float) -> float:
        """Return the learned factor of ``model``, or ``default`` (clamped) before any observation.

        Args:
            model: A model id.
            default: The configured factor to use until the model has been observed.

        Returns:
            A factor in ``[low, high]``.
        """
        with self._lock:
            found = self._state.get(model)
        value = found[0] if found is not None else default
        return min(self._high, max(self._low, value))

    def factors(self, defaults: Mapping[str, float]) -> dict[str, float]:
        """Return :meth:`factor` of each model of ``defaults`` (model -> its default), under
        one lock: the ledger asks for every tier's on every request."""
        low, high = self._low, self._high
        with self._lock:
            found = [self._state.get(model) for model in defaults]
        return {model: min(high, max(low, f[0] if f is not None else default))
                for (model, default), f in zip(defaults.items(), found, strict=True)}

    def observations(self, model: str) -> int:
        """Return how many observations of ``model`` shaped its factor."""
        with self._lock:
            found = self._state.get(model)
        return found[1] if found is not None else 0
