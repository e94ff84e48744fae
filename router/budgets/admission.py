"""Spend budgets and rate limits: reserve when a request starts, settle when its usage is known.

A request's *scopes* are its team, its key (or, in passthrough mode, its caller) — each with
``usd_per_day/week/month`` budgets and per-minute rates. Reserving is one atomic charge on the
store (:class:`router.budgets.counters.Counters`): the request's worst case, priced on the
dearest model that may answer it (its estimated input at the dearest input rate it may pay,
plus ``max_tokens`` of output), is added to every budget window it counts in, and its tokens
are taken from every bucket; if any budget is already spent or any bucket is empty, nothing is
taken and the request is refused. Because a budget refuses only once it is spent, and each
admitted request reserves at least what it will cost, concurrent requests overspend by at most
one request. Settling adds the difference between what the account stage priced and what was
reserved, and gives back unused tokens.

Before it is spent, a budget warns (``budgets.warn_at``) and then caps the tier
(``budgets.downgrade_at``, ``downgrade_to``): the cap is a bound the decide stage applies like
a guard rule's ``cap``, so conversations and capabilities still hold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Literal

from router.accounting.cost import tokens_of
from router.budgets.counters import Counters
from router.budgets.keys import Identity, Scope
from router.budgets.windows import LIMIT_FIELDS, WINDOWS, Calendar, Period, Window
from router.config import BudgetsConfig, Tier
from router.errors import RouterError
from router.state.store import Charge
from router.wire import CacheCreation, Usage

MICRO = Decimal(1_000_000)
MINUTE_US = 60_000_000
DAY = 86_400.0
INPUT_MARGIN = 1.25
"""The input side is reserved at this multiple of the estimate: the estimate is tiktoken's
count scaled by a learned factor, and a reservation below the actual cost would let concurrent
requests overspend by more than one."""
MAX_PLANS = 10_000
"""Scopes whose charges are kept ready (every listed key, and passthrough callers seen)."""
WARNING_HEADER = "x-router-budget-warning"

Pricer = Callable[[str, Usage], Decimal | None]
RateKind = Literal["requests", "input_tokens", "output_tokens"]
RATE_FIELDS: dict[RateKind, str] = {"requests": "requests_per_minute",
                                    "input_tokens": "input_tokens_per_minute",
                                    "output_tokens": "output_tokens_per_minute"}
_ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly"}


class BudgetExceeded(RouterError):
    """A budget is spent, or a rate limit reached: Anthropic's 429."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, action: str, seconds: int,
                 headers: dict[str, str] | None = None) -> None:
        spent = action == "refused"
        # A spent budget comes back when its window turns: the SDKs must not retry at once,
        # yet the client is told when (the renderer sends retry-after only with retries).
        super().__init__(message, headers={**(headers or {}),
                                           **({"retry-after": str(seconds)} if spent else {})},
                         retry_after=None if spent else seconds, should_retry=not spent)
        self.action = action
        """``refused`` (a budget is spent) or ``rate_limited``."""


@dataclass(frozen=True, slots=True)
class Budget:
    """One USD budget window of a scope."""

    scope: Scope
    period: Period
    limit: int
    """Micro-dollars."""
    key: str
    """The store key of its spend: named for the window's first day."""

    def ttl(self, now: float) -> float:
        """Seconds the spend is kept: past the window's end, for requests still settling."""
        return self.period.end_ts - now + DAY

    def describe(self, spent: int) -> str:
        """``team 'x' has spent 41.50 of its daily budget of 50.00 USD``."""
        every = _ADJECTIVE[self.period.window]
        return (f"{self.scope.describe()} has spent {usd(spent)} of its {every} budget of "
                f"{usd(self.limit)} USD")


@dataclass(frozen=True, slots=True)
class Rate:
    """One per-minute rate of a scope: a token bucket a minute deep."""

    scope: Scope
    kind: RateKind
    per_minute: int
    key: str

    def charge(self, units: int, limit: bool = True) -> Charge:
        """The bucket charge for ``units`` (negative: given back)."""
        micros = units * MINUTE_US / self.per_minute
        amount = math.ceil(micros) if units > 0 else -math.floor(-micros)
        return Charge(self.key, amount, (MINUTE_US + max(amount, 0)) / 1e6 + 1,
                      MINUTE_US if limit else None, bucket=True)

    def remaining(self, due_us: int, now_us: int) -> int:
        """Units left once the bucket is full again at ``due_us``."""
        empty = due_us - now_us if due_us > now_us else 0
        return max(0, (MINUTE_US - empty) * self.per_minute // MINUTE_US)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one identity's requests charge in the current windows: made once a day."""

    day: Period
    budgets: tuple[Budget, ...]
    rates: tuple[Rate, ...]


def plan_of(scopes: tuple[Scope, ...], periods: Mapping[Window, Period]) -> Plan:
    """The budgets and rates of ``scopes`` in these windows."""
    budgets = tuple(
        Budget(scope, periods[window], round(Decimal(str(limit)) * MICRO),
               f"budget:{scope.kind}:{scope.name}:{window}:{periods[window].label}")
        for scope in scopes for window in WINDOWS
        if (limit := getattr(scope.limits, LIMIT_FIELDS[window])) is not None)
    rates = tuple(Rate(scope, kind, n, f"rate:{scope.kind}:{scope.name}:{kind}")
                  for scope in scopes for kind, name in RATE_FIELDS.items()
                  if (n := getattr(scope.limits, name)) is not None)
    return Plan(periods["day"], budgets, rates)


@dataclass
class Ticket:
    """A request's reservation: what to settle, and what it tells the client."""

    once: str
    plan: Plan
    reserved: int
    """Micro-dollars reserved in each budget."""
    input_tokens: int
    output_tokens: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    """What the answer tells the client: the budget warning, the rate-limit headers."""
    warning: str = ""
    """Set when the most spent budget is past ``warn_at`` (or ``downgrade_at``)."""
    cap: Tier | None = None
    """Route no higher than this tier (the downgrade)."""
    note: str = ""
    """Why, for the decision's reason."""


def usd(micros: int) -> str:
    """Micro-dollars as USD with two decimals (four below a cent)."""
    value = Decimal(micros) / MICRO
    return f"{value:.2f}" if abs(value) >= Decimal("0.01") or not value else f"{value:.4f}"


def micros_of(cost: Decimal | None) -> int:
    """A cost as whole micro-dollars (half to even): what the budgets add up."""
    return 0 if cost is None else round(cost * MICRO)


def reservation(model: str, input_tokens: int, max_tokens: int, body: bytes,
                price: Pricer) -> int:
    """The most a request can cost, in micro-dollars: its estimated input (with a margin) at the
    dearest input rate it may pay (a cache write, if it marks breakpoints), plus ``max_tokens``
    of output. 0 for a model without a price."""
    tokens = int(input_tokens * INPUT_MARGIN) + 1
    if b'"cache_control"' not in body:
        usage = Usage(input_tokens=tokens, output_tokens=max_tokens)
    else:
        long = b'"1h"' in body
        usage = Usage(output_tokens=max_tokens, cache_creation_input_tokens=tokens,
                      cache_creation=CacheCreation(ephemeral_5m_input_tokens=0 if long else tokens,
                                                   ephemeral_1h_input_tokens=tokens if long else 0))
    cost = price(model, usage)
    return 0 if cost is None else math.ceil(cost * MICRO)


class Admissions:
    """Reserves and settles requests against the limits of one config."""

    def __init__(self, counters: Counters, settings: BudgetsConfig, calendar: Calendar) -> None:
        self.counters = counters
        self.settings = settings
        self.calendar = calendar
        self._plans: dict[tuple[str, str], Plan] = {}

    def plan(self, identity: Identity, now: float) -> Plan:
        """The charges of ``identity``'s requests now (kept until the day turns)."""
        periods = self.calendar.at(now)
        key = (identity.kind, identity.name)
        plan = self._plans.get(key)
        if plan is None or plan.day is not periods["day"]:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            plan = self._plans[key] = plan_of(identity.scopes, periods)
        return plan

    async def reserve(self, identity: Identity, models: list[str], input_tokens: int,
                      max_tokens: int, body: bytes, price: Pricer, request_id: str
                      ) -> Ticket | None:
        """Reserve a request's worst case, priced on the dearest of the ``models`` that may
        answer it; None when no limit applies to it.

        Raises:
            BudgetExceeded: a budget is spent or a rate limit reached; nothing was reserved.
            Unavailable: the store did not answer and budgets fail closed.
        """
        if not identity.scopes:
            return None
        now = time.time()
        now_us = int(now * 1e6)
        plan = self.plan(identity, now)
        budgets, rates = plan.budgets, plan.rates
        reserved = max(reservation(m, input_tokens, max_tokens, body, price)
                       for m in dict.fromkeys(models)) if budgets else 0
        units = {"requests": 1, "input_tokens": input_tokens, "output_tokens": max_tokens}
        charges = [Charge(b.key, reserved, b.ttl(now), b.limit) for b in budgets]
        charges += [r.charge(units[r.kind]) for r in rates]
        charged = await self.counters.charge(charges, now_us, f"{request_id}:reserve",
                                             may_refuse=True)
        values = charged.values
        if not charged.applied:
            raise self._refusal(plan, charges, values, now_us)
        ticket = Ticket(f"{request_id}:settle", plan, reserved, input_tokens, max_tokens)
        if budgets:
            self._advise(ticket, [v - reserved for v in values[:len(budgets)]])
        if rates:
            ticket.headers += _rate_headers(rates, values[len(budgets):], now_us)
        return ticket

    async def settle(self, ticket: Ticket, cost: Decimal | None, usage: Usage | None) -> None:
        """Replace the reservation by what the request cost, and give back unused tokens."""
        now = time.time()
        delta = micros_of(cost) - ticket.reserved
        plan = ticket.plan
        charges = [Charge(b.key, delta, b.ttl(now)) for b in plan.budgets] if delta else []
        if plan.rates:
            tokens = tokens_of(usage or Usage())
            used = {"input_tokens": tokens.input + tokens.cache_write_5m
                    + tokens.cache_write_1h - ticket.input_tokens,
                    "output_tokens": tokens.output - ticket.output_tokens}
            charges += [r.charge(used[r.kind], limit=False) for r in plan.rates
                        if r.kind != "requests" and used[r.kind]]
        if charges:
            await self.counters.charge(charges, int(now * 1e6), ticket.once, may_refuse=False)

    def _advise(self, ticket: Ticket, spent: list[int]) -> None:
        """Warn, and cap the tier, as the most spent budget nears its limit."""
        share, budget, before = max(
            (((s / b.limit if b.limit else 1.0), b, s)
             for b, s in zip(ticket.plan.budgets, spent, strict=True)), key=lambda t: t[0])
        settings = self.settings
        if share < settings.warn_at and (settings.downgrade_at is None
                                          or share < settings.downgrade_at):
            return
        text = (f"{budget.describe(before)} ({share:.0%}); it resets at "
                f"{budget.period.resets_at()}")
        if settings.downgrade_at is not None and share >= settings.downgrade_at:
            ticket.cap = settings.downgrade_to
            ticket.note = f"{text}: capped at {settings.downgrade_to}"
        ticket.warning = text
        ticket.headers.append((WARNING_HEADER, text))

    def _refusal(self, plan: Plan, charges: list[Charge], values: list[int], now_us: int
                 ) -> BudgetExceeded:
        """The error for a refused reservation: the limit that will be reached the longest."""
        now = now_us / 1e6
        budgets, rates = plan.budgets, plan.rates
        reasons: list[tuple[float, str, bool]] = []
        for b, c, v in zip(budgets, charges, values, strict=False):
            if c.blocks(v, now_us):
                reasons.append((b.period.end_ts - now, f"{b.describe(v)}; it resets at "
                                                       f"{b.period.resets_at()}", True))
        dues = values[len(budgets):]
        for r, c, v in zip(rates, charges[len(budgets):], dues, strict=True):
            if c.blocks(v, now_us):
                wait = (v + c.amount - MINUTE_US - now_us) / 1e6
                unit = r.kind.replace("_", " ")
                reasons.append((wait, f"{r.scope.describe()} is over its rate limit of "
                                      f"{r.per_minute} {unit} per minute", False))
        # Another request settled meanwhile and the store now shows room: say so plainly.
        wait, message, spent = max(reasons, default=(1.0, "a limit of this key or team was "
                                                     "reached", False))
        seconds = max(1, math.ceil(wait))
        if spent:
            return BudgetExceeded(message, action="refused", seconds=seconds)
        return BudgetExceeded(f"{message}; retry in {seconds} s", action="rate_limited",
                              seconds=seconds, headers=dict(_rate_headers(rates, dues, now_us)))


def _rate_headers(rates: tuple[Rate, ...], dues: list[int], now_us: int
                  ) -> list[tuple[str, str]]:
    """``x-router-ratelimit-*`` headers, in the style of the API's ``anthropic-ratelimit-*``:
    for each kind, the scope with the least left."""
    tightest: dict[RateKind, tuple[int, Rate, int]] = {}
    for rate, due in zip(rates, dues, strict=True):
        left = rate.remaining(due, now_us)
        if rate.kind not in tightest or left < tightest[rate.kind][0]:
            tightest[rate.kind] = (left, rate, due)
    headers = []
    for kind, (left, rate, due) in tightest.items():
        name = _HEADER_NAMES[kind]
        headers += [(name[0], str(rate.per_minute)), (name[1], str(left)),
                    (name[2], _rfc3339(-(-max(due, now_us) // 1_000_000)))]
    return headers


_HEADER_NAMES = {kind: tuple(f"x-router-ratelimit-{kind.replace('_', '-')}-{part}"
                             for part in ("limit", "remaining", "reset"))
                 for kind in RATE_FIELDS}


@lru_cache(maxsize=256)
def _rfc3339(seconds: int) -> str:
    """A Unix time in whole seconds as RFC 3339 UTC."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
