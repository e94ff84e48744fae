"""The budgets of one worker: who a request is from, its reservation and settlement, and what
``GET /v1/router/budgets`` and the budget gauges show. Built in the app's lifespan; a reload
swaps the keys and limits in one assignment."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from router.accounting.metrics import OTHER, Metrics
from router.budgets.admission import Admissions, Budget, Pricer, Ticket, plan_of
from router.budgets.counters import Counters
from router.budgets.keys import Identity, Keyring, Scope, has_limits
from router.budgets.windows import Calendar, zone_of
from router.config import Config
from router.state import Store
from router.wire import Usage


@dataclass(frozen=True, slots=True)
class _Live:
    """What one config says: replaced whole on reload."""

    keyring: Keyring
    admissions: Admissions
    scopes: tuple[Scope, ...]
    """Teams and keys with limits: what the report and the gauges show."""


class Budgets:
    """Keys, budgets and rate limits for one worker."""

    def __init__(self, store: Store, config: Config, environ: Mapping[str, str],
                 on_fallback: Callable[[str, BaseException], None] | None = None,
                 source: str = "") -> None:
        """Take the config's keys and limits, and managed mode's upstream keys from ``environ``.

        Raises:
            ConfigError: managed mode without its upstream keys in ``environ``.
        """
        self.counters = Counters(store, store.on_error, on_fallback)
        self._environ = dict(environ)
        self._live = self._build(config, source)

    def configure(self, config: Config, source: str = "") -> None:
        """Adopt a reloaded config's keys and limits.

        Raises:
            ConfigError: managed mode without its upstream keys in the environment read at
                start (the old keys stay).
        """
        self._live = self._build(config, source)

    def _build(self, config: Config, source: str) -> _Live:
        keyring = Keyring(config, self._environ, source)
        calendar = Calendar(zone_of(config.budgets.timezone))
        scopes = [Scope("team", team, limits) for team, limits in keyring.teams.items()]
        scopes += [Scope("key", k.name, k.limits) for k in keyring.listed()]
        return _Live(keyring, Admissions(self.counters, config.budgets, calendar),
                     tuple(s for s in scopes if has_limits(s.limits)))

    @property
    def keyring(self) -> Keyring:
        """The live keys."""
        return self._live.keyring

    def identify(self, headers: Mapping[str, str]) -> Identity:
        """Who a request is from (raises AuthenticationFailed in managed mode)."""
        return self._live.keyring.identify(headers)

    def team_label(self, identity: Identity | None) -> str:
        """The ``team`` metric label: a configured team, else ``other``."""
        team = identity.team if identity is not None else None
        return team if team is not None and team in self._live.keyring.teams else OTHER

    async def reserve(self, identity: Identity, models: list[str], input_tokens: int,
                      max_tokens: int, body: bytes, price: Pricer, request_id: str
                      ) -> Ticket | None:
        """See :meth:`router.budgets.admission.Admissions.reserve`."""
        return await self._live.admissions.reserve(identity, models, input_tokens, max_tokens,
                                                   body, price, request_id)

    async def settle(self, ticket: Ticket, cost: Decimal | None, usage: Usage | None) -> None:
        """See :meth:`router.budgets.admission.Admissions.settle`."""
        await self._live.admissions.settle(ticket, cost, usage)

    async def current(self) -> tuple[list[tuple[Budget, int]], bool]:
        """Every configured budget window now, with its spend (in-flight requests at their
        reservation), and whether the store was unreachable (this worker's view then)."""
        live = self._live
        budgets = plan_of(live.scopes, live.admissions.calendar.at(time.time())).budgets
        values, degraded = await self.counters.values([b.key for b in budgets])
        return list(zip(budgets, values, strict=True)), degraded

    async def report(self) -> dict[str, Any]:
        """The state of every budget, for ``GET /v1/router/budgets``."""
        current, degraded = await self.current()
        settings = self._live.admissions.settings
        keyring = self._live.keyring
        return {
            "now": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "timezone": settings.timezone,
            "mode": keyring.mode,
            "store": self.counters.name,
            "store_unreachable": degraded,
            "warn_at": settings.warn_at,
            "downgrade_at": settings.downgrade_at,
            "downgrade_to": settings.downgrade_to,
            "budgets": [_budget_row(b, spent, settings.warn_at, settings.downgrade_at)
                        for b, spent in current],
            "rate_limits": [
                {"scope": s.kind, "name": s.name, **{
                    f: getattr(s.limits, f) for f in ("requests_per_minute",
                                                      "input_tokens_per_minute",
                                                      "output_tokens_per_minute")
                    if getattr(s.limits, f) is not None}}
                for s in self._rate_scopes()],
            "keys": [{"name": k.name, "team": k.team, "revoked": k.revoked}
                     for k in keyring.listed()],
        }

    def _rate_scopes(self) -> list[Scope]:
        return [s for s in self._live.scopes if s.limits.requests_per_minute or
                s.limits.input_tokens_per_minute or s.limits.output_tokens_per_minute]

    async def refresh(self, metrics: Metrics) -> None:
        """Set the budget gauges from the store (before each scrape)."""
        current, _ = await self.current()
        metrics.show_budgets([(b.scope.kind, b.scope.name, b.period.window,
                               b.limit / 1e6, spent / 1e6) for b, spent in current])


def _budget_row(budget: Budget, spent: int, warn_at: float, downgrade_at: float | None
                ) -> dict[str, Any]:
    share = spent / budget.limit if budget.limit else 1.0
    state = ("refusing" if share >= 1 else "downgrading" if downgrade_at is not None
             and share >= downgrade_at else "warning" if share >= warn_at else "ok")
    return {
        "scope": budget.scope.kind,
        "name": budget.scope.name,
        "window": budget.period.window,
        "period_start": budget.period.start.isoformat(),
        "resets_at": budget.period.resets_at(),
        "limit_micro_usd": budget.limit,
        "spent_micro_usd": spent,
        "limit_usd": budget.limit / 1e6,
        "spent_usd": spent / 1e6,
        "remaining_usd": (budget.limit - spent) / 1e6,
        "share": round(share, 4),
        "state": state,
    }
