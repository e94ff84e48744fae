"""Spend budgets and rate limits: reserve when a request starts, settle when its usage is known.

A request's *scopes* are its team, its key (or, in passthrough mode, its caller) — each with
``usd_per_day/week/month`` budgets and per-minute rates. Reserving is one atomic charge on the
store (:class:`router.budgets.counters.Counters`): the request's worst case, priced on the
model routed to (its estimated input at the dearest input rate it may pay, plus ``max_tokens``
of output), is added to every budget window it counts in, and its tokens are taken from every
bucket; if any budget is already spent or any bucket is empty, nothing is taken and the
request is refused. Because a budget refuses only once it is spent, and each admitted request
reserves at least what it will cost, concurrent requests overspend by at most one request.
Settling adds the difference between what the account stage priced and what was reserved,
and gives back unused tokens.

Before it is spent, a budget warns (``budgets.warn_at``) and then caps the tier
(``budgets.downgrade_at``, ``downgrade_to``): the cap is a bound the decide stage applies like
a guard rule's ``cap``, so conversations and capabilities still hold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import Literal

from router.accounting.cost import tokens_of
from router.budgets.counters import Counters
from router.budgets.keys import Identity
from router.budgets.windows import LIMIT_FIELDS, WINDOWS, Calendar, Period, Window
from router.config import BudgetsConfig, Limits, Tier
from router.errors import RouterError
from router.state.store import Charge
from router.wire import CacheCreation, Usage

MICRO = Decimal(1_000_000)
MINUTE_US = 60_000_000
DAY = 86_400.0
INPUT_MARGIN = Decimal("1.25")
"""The input side is reserved at this multiple of the estimate: the estimate is tiktoken's
count scaled by a learned factor, and a reservation below the actual cost would let concurrent
requests overspend by more than one."""

Pricer = Callable[[str, Usage], Decimal | None]
RateKind = Literal["requests", "input_tokens", "output_tokens"]
RATE_FIELDS: dict[RateKind, str] = {"requests": "requests_per_minute",
                                    "input_tokens": "input_tokens_per_minute",
                                    "output_tokens": "output_tokens_per_minute"}


WARNING_HEADER = "x-router-budget-warning"


class BudgetExceeded(RouterError):
    """A budget is spent, or a rate limit reached: Anthropic's 429."""

    status_code = 429
    error_type = "rate_limit_error"

    def __init__(self, message: str, *, headers: dict[str, str], action: str) -> None:
        super().__init__(message, headers=headers)
        self.action = action
        """``refused`` (a budget is spent) or ``rate_limited``."""


@dataclass(frozen=True, slots=True)
class Scope:
    """A team, key or caller, and its limits."""

    kind: Literal["team", "key", "caller"]
    name: str
    limits: Limits

    def describe(self) -> str:
        """How messages name it."""
        if self.kind == "caller":
            return f"this API key (caller {self.name})"
        return f"{self.kind} '{self.name}'"


def scopes_of(identity: Identity) -> list[Scope]:
    """The scopes whose limits a request counts against."""
    scopes = []
    if identity.team is not None and has_limits(identity.team_limits):
        scopes.append(Scope("team", identity.team, identity.team_limits))
    if has_limits(identity.limits):
        scopes.append(Scope(identity.kind, identity.name, identity.limits))
    return scopes


def has_limits(limits: Limits) -> bool:
    """Whether any limit is set."""
    return any(getattr(limits, f) is not None for f in limits.__struct_fields__)


@dataclass(frozen=True, slots=True)
class Budget:
    """One USD budget window of a scope."""

    scope: Scope
    period: Period
    limit: int
    """Micro-dollars."""

    @property
    def key(self) -> str:
        """The store key of its spend."""
        return f"budget:{self.scope.kind}:{self.scope.name}:{self.period.window}:" \
               f"{self.period.label}"

    def ttl(self, now: float) -> float:
        """Seconds the spend is kept: past the window's end, for requests still settling."""
        return self.period.end_ts - now + DAY

    def describe(self, spent: int) -> str:
        """``team 'x' has spent 41.50 of its daily budget of 50.00 USD``."""
        every = _ADJECTIVE[self.period.window]
        return (f"{self.scope.describe()} has spent {usd(spent)} of its {every} budget of "
                f"{usd(self.limit)} USD")


_ADJECTIVE = {"day": "daily", "week": "weekly", "month": "monthly"}


@dataclass(frozen=True, slots=True)
class Rate:
    """One per-minute rate of a scope: a token bucket a minute deep."""

    scope: Scope
    kind: RateKind
    per_minute: int

    @property
    def key(self) -> str:
        """The store key of its bucket."""
        return f"rate:{self.scope.kind}:{self.scope.name}:{self.kind}"

    def micros(self, units: int) -> int:
        """Microseconds of refill ``units`` take (negative: given back)."""
        return math.ceil(units * MINUTE_US / self.per_minute) if units > 0 else \
            -math.floor(-units * MINUTE_US / self.per_minute)

    def charge(self, units: int, limit: bool = True) -> Charge:
        """The bucket charge for ``units``."""
        amount = self.micros(units)
        return Charge(self.key, amount, (MINUTE_US + max(amount, 0)) / 1e6 + 1,
                      MINUTE_US if limit else None, bucket=True)

    def remaining(self, due_us: int, now_us: int) -> int:
        """Units left once the bucket is full again at ``due_us``."""
        empty = max(0, due_us - now_us)
        return max(0, math.floor((MINUTE_US - empty) * self.per_minute / MINUTE_US))


@dataclass
class Ticket:
    """A request's reservation: what to settle, and what it tells the client."""

    once: str
    budgets: list[Budget]
    rates: list[Rate]
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
    if cost is None:
        return 0
    return int((cost * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


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
    if cost is None:
        return 0
    return int((cost * MICRO).to_integral_value(rounding=ROUND_CEILING))


class Admissions:
    """Reserves and settles requests against the limits of one config."""

    def __init__(self, counters: Counters, settings: BudgetsConfig, calendar: Calendar) -> None:
        self.counters = counters
        self.settings = settings
        self.calendar = calendar

    def budgets_of(self, scopes: list[Scope], periods: Mapping[Window, Period]
                   ) -> list[Budget]:
        """The USD budgets in force for ``scopes`` now."""
        found = []
        for scope in scopes:
            for window in WINDOWS:
                limit = getattr(scope.limits, LIMIT_FIELDS[window])
                if limit is not None:
                    found.append(Budget(scope, periods[window], micros_of(Decimal(str(limit)))))
        return found

    async def reserve(self, identity: Identity, models: list[str], input_tokens: int,
                      max_tokens: int, body: bytes, price: Pricer, request_id: str
                      ) -> Ticket | None:
        """Reserve a request's worst case, priced on the dearest of the ``models`` that may
        answer it; None when no limit applies to it.

        Raises:
            BudgetExceeded: a budget is spent or a rate limit reached; nothing was reserved.
            Unavailable: the store did not answer and budgets fail closed.
        """
        scopes = scopes_of(identity)
        if not scopes:
            return None
        now = time.time()
        now_us = int(now * 1e6)
        budgets = self.budgets_of(scopes, self.calendar.at(now))
        rates = [Rate(s, kind, n) for s in scopes for kind, f in RATE_FIELDS.items()
                 if (n := getattr(s.limits, f)) is not None]
        reserved = max(reservation(m, input_tokens, max_tokens, body, price)
                       for m in models) if budgets else 0
        units = {"requests": 1, "input_tokens": input_tokens, "output_tokens": max_tokens}
        charges = [Charge(b.key, reserved, b.ttl(now), b.limit) for b in budgets]
        charges += [r.charge(units[r.kind]) for r in rates]
        once = f"{request_id}:reserve"
        charged = await self.counters.charge(charges, now_us, once, may_refuse=True)
        values = charged.values
        if not charged.applied:
            raise self._refusal(budgets, rates, charges, values, now_us)
        ticket = Ticket(f"{request_id}:settle", budgets, rates, reserved, input_tokens,
                        max_tokens)
        self._advise(ticket, [v - reserved for v in values[:len(budgets)]])
        ticket.headers += _rate_headers(rates, values[len(budgets):], now_us)
        return ticket

    async def settle(self, ticket: Ticket, cost: Decimal | None, usage: Usage | None) -> None:
        """Replace the reservation by what the request cost, and give back unused tokens."""
        now = time.time()
        delta = micros_of(cost) - ticket.reserved
        charges = [Charge(b.key, delta, b.ttl(now)) for b in ticket.budgets] if delta else []
        tokens = tokens_of(usage or Usage())
        used = {"input_tokens": tokens.input + tokens.cache_write_5m + tokens.cache_write_1h
                - ticket.input_tokens, "output_tokens": tokens.output - ticket.output_tokens}
        charges += [r.charge(used[r.kind], limit=False) for r in ticket.rates
                    if r.kind != "requests" and used[r.kind]]
        if charges:
            await self.counters.charge(charges, int(now * 1e6), ticket.once, may_refuse=False)

    def _advise(self, ticket: Ticket, spent: list[int]) -> None:
        """Warn, and cap the tier, as the most spent budget nears its limit."""
        if not ticket.budgets:
            return
        share, budget, before = max(
            ((s / b.limit if b.limit else 1.0), b, s)
            for b, s in zip(ticket.budgets, spent, strict=True))
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

    def _refusal(self, budgets: list[Budget], rates: list[Rate], charges: list[Charge],
                 values: list[int], now_us: int) -> BudgetExceeded:
        """The error for a refused reservation: the limit that will be reached the longest."""
        now = now_us / 1e6
        reasons: list[tuple[float, str, bool]] = []
        for b, c, v in zip(budgets, charges, values, strict=False):
            if c.blocks(v, now_us):
                wait = b.period.end_ts - now
                reasons.append((wait, f"{b.describe(v)}; it resets at "
                                      f"{b.period.resets_at()}", True))
        for r, c, v in zip(rates, charges[len(budgets):], values[len(budgets):], strict=True):
            if c.blocks(v, now_us):
                wait = (v + c.amount - MINUTE_US - now_us) / 1e6
                unit = r.kind.replace("_", " ")
                reasons.append((wait, f"{r.scope.describe()} is over its rate limit of "
                                      f"{r.per_minute} {unit} per minute", False))
        # Another request settled meanwhile and the store now shows room: say so plainly.
        wait, message, spent = max(reasons, default=(1.0, "a limit of this key or team was "
                                                     "reached", False))
        seconds = max(1, math.ceil(wait))
        headers = {"retry-after": str(seconds)}
        if spent:
            # Retrying soon cannot help: the SDKs honour this and give up at once.
            headers["x-should-retry"] = "false"
        else:
            message += f"; retry in {seconds} s"
            headers.update(_rate_headers(rates, values[len(budgets):], now_us))
        return BudgetExceeded(message, headers=headers,
                              action="refused" if spent else "rate_limited")


def _rate_headers(rates: list[Rate], dues: list[int], now_us: int) -> list[tuple[str, str]]:
    """``x-router-ratelimit-*`` headers, in the style of the API's ``anthropic-ratelimit-*``:
    for each kind, the scope with the least left."""
    tightest: dict[RateKind, tuple[int, Rate, int]] = {}
    for rate, due in zip(rates, dues, strict=True):
        left = rate.remaining(due, now_us)
        if rate.kind not in tightest or left < tightest[rate.kind][0]:
            tightest[rate.kind] = (left, rate, due)
    headers = []
    for kind, (left, rate, due) in tightest.items():
        name = f"x-router-ratelimit-{kind.replace('_', '-')}"
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(max(due, now_us) / 1e6)))
        headers += [(f"{name}-limit", str(rate.per_minute)), (f"{name}-remaining", str(left)),
                    (f"{name}-reset", reset)]
    return headers
