"""What a request cost, from the usage the API reported and the dated prices in ``router.yaml``.

Money is :class:`decimal.Decimal`, never float, until it is exported. Each token is billed once:
``input_tokens`` excludes cache reads and writes, which have their own rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import msgspec

from router.config import ModelPrice, PricingConfig
from router.wire import Usage

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)


class Tokens(msgspec.Struct, frozen=True):
    """Billable quantities of one answer, split the way they are priced (a Struct: the ledger
    decodes a million of them for ``router simulate``, three times faster than a dataclass)."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    web_searches: int = 0

    @property
    def input_side(self) -> int:
        """All input tokens: uncached, cache reads and cache writes."""
        return self.input + self.cache_read + self.cache_write_5m + self.cache_write_1h

    @property
    def cached(self) -> int:
        """Tokens of the cached prefix, read or written."""
        return self.cache_read + self.cache_write_5m + self.cache_write_1h

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(
            self.input + other.input,
            self.output + other.output,
            self.cache_read + other.cache_read,
            self.cache_write_5m + other.cache_write_5m,
            self.cache_write_1h + other.cache_write_1h,
            self.web_searches + other.web_searches,
        )


def tokens_of(usage: Usage) -> Tokens:
    """Return the billable quantities of a usage object.

    Cache writes are split by TTL when the API says how; an unsplit remainder is billed at the
    5-minute rate, the default TTL.
    """
    written = usage.cache_creation_input_tokens or 0
    split = usage.cache_creation
    w1h = split.ephemeral_1h_input_tokens if split else 0
    w5m = split.ephemeral_5m_input_tokens if split else 0
    w5m += max(0, written - w5m - w1h)
    searches = usage.server_tool_use.web_search_requests if usage.server_tool_use else 0
    return Tokens(
        input=usage.input_tokens or 0,
        output=usage.output_tokens or 0,
        cache_read=usage.cache_read_input_tokens or 0,
        cache_write_5m=w5m,
        cache_write_1h=w1h,
        web_searches=searches,
    )


@dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens, as Decimals."""

    input: Decimal
    output: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    long_threshold: int | None
    long_input: Decimal
    long_output: Decimal
    geo_multiplier: bool

    @classmethod
    def of(cls, price: ModelPrice) -> Rates:
        """Convert a config price (floats from YAML) to exact decimals."""
        long = price.long_context
        return cls(
            _dec(price.input), _dec(price.output), _dec(price.cache_write_5m),
            _dec(price.cache_write_1h), _dec(price.cache_read),
            long.threshold if long else None,
            _dec(long.input) if long else ZERO, _dec(long.output) if long else ZERO,
            price.geo_multiplier,
        )


def _dec(value: float) -> Decimal:
    # str() first: Decimal(0.1) would carry the float's binary error into the bill.
    return Decimal(str(value))


class PriceTable:
    """The price list of a config, by model id and alias."""

    def __init__(self, pricing: PricingConfig | None) -> None:
        self._rates: dict[str, Rates] = {}
        self._geo: dict[str, Decimal] = {}
        self._search = ZERO
        self._batch = Decimal(1)
        if pricing is None:
            return
        for model, price in pricing.models.items():
            rates = Rates.of(price)
            for name in (model, *price.aliases):
                self._rates[name] = rates
        self._geo = {k: _dec(v) for k, v in pricing.inference_geo.items()}
        self._search = _dec(pricing.web_search_per_1000) / 1000
        self._batch = _dec(pricing.batch_discount)

    def __contains__(self, model: str) -> bool:
        return model in self._rates

    def models(self) -> frozenset[str]:
        """Every priced model id and alias."""
        return frozenset(self._rates)

    def cost(self, model: str, usage: Usage) -> Decimal | None:
        """Return the USD cost of ``usage`` on ``model``, or None if the model has no price."""
        rates = self._rates.get(model)
        if rates is None:
            return None
        return self.cost_of_tokens(rates, tokens_of(usage), usage.inference_geo,
                                   usage.service_tier)

    def cost_of(self, model: str, tokens: Tokens, *, inference_geo: str | None = None,
                service_tier: str | None = None) -> Decimal | None:
        """Return the USD cost of billable quantities on ``model`` (None if it has no price),
        with the usage's ``inference_geo`` and ``service_tier`` as the API reported them."""
        rates = self._rates.get(model)
        if rates is None:
            return None
        return self.cost_of_tokens(rates, tokens, inference_geo, service_tier)

    def cost_of_tokens(self, rates: Rates, t: Tokens, inference_geo: str | None = None,
                       service_tier: str | None = None) -> Decimal:
        """Return the USD cost of billable quantities at ``rates``, with the usage's
        ``inference_geo`` and ``service_tier`` as the API reported them."""
        if rates.long_threshold is not None and t.input_side > rates.long_threshold:
            # The long-context premium re-prices the whole request; cache rates keep their ratio.
            scale = rates.long_input / rates.input if rates.input else Decimal(1)
            micro = (t.input * rates.long_input + t.output * rates.long_output
                     + t.cache_read * rates.cache_read * scale
                     + t.cache_write_5m * rates.cache_write_5m * scale
                     + t.cache_write_1h * rates.cache_write_1h * scale)
        else:
            # (Multiplying by a scale of 1 changes neither the value nor its exponent.)
            micro = (t.input * rates.input + t.output * rates.output
                     + t.cache_read * rates.cache_read + t.cache_write_5m * rates.cache_write_5m
                     + t.cache_write_1h * rates.cache_write_1h)
        usd = micro / MILLION
        if rates.geo_multiplier and inference_geo in self._geo:
            usd *= self._geo[inference_geo]
        if service_tier == "batch":
            usd *= self._batch
        return usd + t.web_searches * self._search
