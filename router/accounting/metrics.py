"""Every Prometheus metric the proxy exports, on a per-app registry.

Labels are bounded: tier, model, rule and status come from the config or a fixed list, and
anything else a client sends becomes ``other``. With several workers the metrics are summed
across them through prometheus-client's multiprocess mode, which the app's lifespan switches on
explicitly in each worker (:func:`use_multiprocess`); creating :class:`Metrics` changes nothing
outside itself.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric

from router.settings import MULTIPROC_ENV

M = TypeVar("M", Counter, Gauge, Histogram)
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
                   300.0, 600.0)
"""LLM answers take from tens of milliseconds (a cached count) to minutes (long thinking)."""
OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                    0.1, 0.25)
RATIO_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3, 1.5, 1.75, 2.0, 3.0)
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write_5m", "cache_write_1h")
OTHER = "other"
FIXED_RULES = frozenset({"default", "conversation", "none", "budget"})
BUDGET_ACTIONS = ("warned", "downgraded", "refused", "rate_limited", "unavailable")
RETRY_REASONS = frozenset({"overloaded_error", "rate_limit_error", "api_error", "timeout_error",
                           "connection", "timeout"})


def use_multiprocess(path: str) -> None:
    """Make this process write its metric values into ``path``, for the server to sum them.

    prometheus-client's multiprocess mode is process-wide by design: it picks its value class
    once and reads the directory from the environment whenever a value is created. So only the
    lifespan of a worker that is one of several calls this, once, before it creates
    :class:`Metrics`.
    """
    os.environ[MULTIPROC_ENV] = path
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def fresh_multiprocess_dir(base: str | None = None) -> str:
    """Create a private, empty directory for one ``router serve`` and its workers.

    Private so that two proxies on one host never mix their metrics; it is removed on exit by
    :func:`remove_multiprocess_dir`.

    Args:
        base: the parent directory (``$ROUTER_METRICS_DIR``); None is the temp dir.
    """
    return tempfile.mkdtemp(prefix="router-metrics-", dir=base)


def remove_multiprocess_dir(path: str) -> None:
    """Remove a directory made by :func:`fresh_multiprocess_dir`."""
    shutil.rmtree(path, ignore_errors=True)


def forget_dead_workers(path: str) -> None:
    """Drop the live gauges (in-flight requests) of workers that are gone.

    Their counters stay: what they counted happened.
    """
    for file in Path(path).glob("gauge_live*_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:
            pass


class _WithoutCreated:
    """A registry's samples less the ``_created`` series.

    One ``_created`` series per series doubles what Prometheus stores, for nothing the dashboards
    use; dropping them here, rather than with prometheus-client's process-wide switch, leaves
    every other registry in the process as it was.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for family in self.registry.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class Metrics:
    """The proxy's metrics; one instance per app, created in its lifespan.

    Args:
        multiprocess_dir: the directory workers share their metrics through, when this app is
            one of several workers (after :func:`use_multiprocess`); None keeps them in this
            instance alone.
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        shared = multiprocess_dir
        if shared:
            forget_dead_workers(shared)
            # Metrics register nowhere: the collector reads every worker's files instead.
            self.registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.registry, path=shared)  # type: ignore[no-untyped-call]
            reg: CollectorRegistry | None = None
        else:
            self.registry = reg = CollectorRegistry()
        self.requests = Counter(
            "router_requests", "Requests answered, by where they were routed and how they ended.",
            ("tier", "model", "rule", "status"), registry=reg)
        self.tokens = Counter(
            "router_tokens", "Tokens the upstream reported, by type.",
            ("model", "tier", "type", "team"), registry=reg)
        self.cost = Counter(
            "router_cost_usd", "USD spent, from reported usage and the configured prices.",
            ("model", "tier", "rule", "team"), registry=reg)
        self.counterfactual = Counter(
            "router_counterfactual_cost_usd",
            "USD the same usage would have cost on the model the client asked for.",
            ("requested_model",), registry=reg)
        self.unpriced = Counter(
            "router_unpriced_requests", "Answers whose model has no price: cost unknown.",
            ("model",), registry=reg)
        self.duration = Histogram(
            "router_request_duration_seconds", "Time from request received to answer complete.",
            ("model", "stream"), buckets=LATENCY_BUCKETS, registry=reg)
        self.ttft = Histogram(
            "router_time_to_first_token_seconds",
            "Time from request received to the first content (whole body when not streamed).",
            ("model", "stream"), buckets=LATENCY_BUCKETS, registry=reg)
        self.overhead = Histogram(
            "router_proxy_overhead_seconds", "Time spent in the proxy itself, upstream excluded.",
            buckets=OVERHEAD_BUCKETS, registry=reg)
        self.upstream_errors = Counter(
            "router_upstream_errors", "Errors from the upstream: HTTP errors and stream errors.",
            ("model", "type"), registry=reg)
        self.in_flight = Gauge(
            "router_in_flight_requests", "Requests being served now.",
            multiprocess_mode="livesum", registry=reg)
        self.estimate_ratio = Histogram(
            "router_token_estimate_ratio",
            "Reported input tokens divided by the router's estimate.",
            ("model",), buckets=RATIO_BUCKETS, registry=reg)
        self.retries = Counter(
            "router_retries", "Upstream attempts retried, by model and reason.",
            ("model", "reason"), registry=reg)
        self.fallbacks = Counter(
            "router_fallbacks", "Requests moved to a fallback model.",
            ("from_model", "to_model"), registry=reg)
        self.circuit_opened = Counter(
            "router_circuit_opened", "Times a model's circuit breaker opened.", ("model",),
            registry=reg)
        self.conversations = Counter(
            "router_conversation_decisions",
            "What the conversation layer did with a request: new, stay, up, down, tool-loop, "
            "sticky, turn, passthrough, request.", ("action",), registry=reg)
        self.stripped = Counter(
            "router_thinking_blocks_stripped",
            "Thinking blocks removed from a history because another model signed them.",
            registry=reg)
        self.rerouted = Counter(
            "router_reroute_rejected",
            "Requests the routed model refused with a 400, retried on the requested model.",
            ("model",), registry=reg)
        self.state_errors = Counter(
            "router_state_fallbacks",
            "Times the shared state store failed and local memory stood in.", ("backend",),
            registry=reg)
        self.reloads = Counter(
            "router_config_reloads", "Config reload attempts.", ("result",), registry=reg)
        self.config_info = Gauge(
            "router_config_info", "The live config (1) and replaced ones (0).",
            ("sha256", "source"), multiprocess_mode="max", registry=reg)
        self.budget_daily = Gauge(
            "router_budget_daily_usd", "The daily spend budget from router.yaml.",
            multiprocess_mode="max", registry=reg)
        # Read from the shared store at each scrape, so the freshest worker's value wins.
        self.budget_spent = Gauge(
            "router_budget_spent_usd",
            "USD spent in the current window of each configured budget (requests in flight at "
            "their reservation).", ("scope", "name", "window"), multiprocess_mode="mostrecent",
            registry=reg)
        self.budget_limit = Gauge(
            "router_budget_limit_usd", "The limit of each configured budget window.",
            ("scope", "name", "window"), multiprocess_mode="mostrecent", registry=reg)
        self.budget_remaining = Gauge(
            "router_budget_remaining_usd",
            "Limit minus spend of each configured budget window (negative: overspent).",
            ("scope", "name", "window"), multiprocess_mode="mostrecent", registry=reg)
        self.budget_actions = Counter(
            "router_budget_actions",
            "Requests the budgets and rate limits acted on: warned, downgraded, refused "
            "(a budget spent), rate_limited, unavailable (the store down, failing closed).",
            ("team", "action"), registry=reg)
        self.shadow_decisions = Counter(
            "router_shadow_decisions",
            "Requests the shadow (candidate) policy would have routed, by its tier and rule.",
            ("tier", "rule"), registry=reg)
        self.shadow_cost = Counter(
            "router_shadow_cost_usd",
            "USD the shadow (candidate) policy would have spent: usage repriced on its models.",
            registry=reg)
        self.ledger_records = Counter(
            "router_ledger_records",
            "Ledger records: written, dropped (the queue was full) or failed (the disk said no).",
            ("result",), registry=reg)
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}
        self.known_teams: frozenset[str] = frozenset()
        self._budgets_shown: set[tuple[str, str, str]] = set()
        self.known_models: frozenset[str] = frozenset()
        self.known_rules: frozenset[str] = frozenset()
        self._live: tuple[str, str] | None = None
        self._exposed = _WithoutCreated(self.registry)

    def configure(self, models: Iterable[str], rules: Iterable[str], sha256: str, source: str,
                  daily_budget: float | None, teams: Iterable[str] = ()) -> None:
        """Adopt a (re)loaded config: the label values it allows and its identity."""
        self.known_models = frozenset(models)
        self.known_rules = frozenset(rules) | FIXED_RULES
        self.known_teams = frozenset(teams)
        for team in (*self.known_teams, OTHER):
            for action in BUDGET_ACTIONS:
                self.budget_actions.labels(team, action)
        if self._live is not None:
            self.config_info.labels(*self._live).set(0)
        self._live = (sha256, source)
        self.config_info.labels(sha256, source).set(1)
        self.budget_daily.set(daily_budget or 0)
        # Zero series for the common labels, so rates and alerts have data from the start.
        for result in ("ok", "error"):
            self.reloads.labels(result)

    def bound(self, metric: M, *values: str) -> M:
        """The child of ``metric`` for these label values, bound once and then reused.

        ``labels()`` validates and locks on every call; on the request path a dict lookup is
        enough, and the label sets are bounded, so the cache is too.
        """
        key = (metric._name, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def model_label(self, model: str | None) -> str:
        """``model`` if the config knows it, else ``other``."""
        return model if model in self.known_models else OTHER

    def rule_label(self, rule: str | None) -> str:
        """``rule`` if the config knows it, else ``other``."""
        return rule if rule in self.known_rules else OTHER

    def team_label(self, team: str | None) -> str:
        """``team`` if the config knows it, else ``other``."""
        return team if team in self.known_teams else OTHER

    def show_budgets(self, budgets: Iterable[tuple[str, str, str, float, float]]) -> None:
        """Set the budget gauges: (scope, name, window, limit, spent) in USD for each configured
        budget window; windows no longer configured are dropped."""
        shown = set()
        for scope, name, window, limit, spent in budgets:
            labels = (scope, name, window)
            shown.add(labels)
            self.budget_limit.labels(*labels).set(limit)
            self.budget_spent.labels(*labels).set(spent)
            self.budget_remaining.labels(*labels).set(limit - spent)
        for labels in self._budgets_shown - shown:
            for gauge in (self.budget_limit, self.budget_spent, self.budget_remaining):
                gauge.remove(*labels)
        self._budgets_shown = shown

    def reason_label(self, reason: str) -> str:
        """A retry reason from the fixed list, else ``other``."""
        return reason if reason in RETRY_REASONS else OTHER

    def exposition(self) -> tuple[bytes, str]:
        """Return the text exposition and its content type, for ``GET /metrics``."""
        return generate_latest(self._exposed), CONTENT_TYPE_LATEST
