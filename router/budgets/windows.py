"""Budget windows: the day, week (from Monday) and month a moment falls in, in a time zone.

A window's spend is kept under a key named for its first day, so a new window starts from
nothing without anyone resetting a counter, and every worker and replica agrees on where a
window begins (the zone comes from ``budgets.timezone``, the instant from the wall clock).
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Literal

Window = Literal["day", "week", "month"]
WINDOWS: tuple[Window, ...] = ("day", "week", "month")
LIMIT_FIELDS: dict[Window, str] = {"day": "usd_per_day", "week": "usd_per_week",
                                   "month": "usd_per_month"}
"""The :class:`router.config.Limits` field that caps each window."""


@dataclass(frozen=True, slots=True)
class Period:
    """One window as it stands at some moment."""

    window: Window
    start: datetime
    end: datetime
    """The first instant of the next window (aware)."""
    end_ts: float = 0.0
    """``end`` as a Unix timestamp."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "end_ts", self.end.timestamp())

    @property
    def label(self) -> str:
        """The window's first day (``2026-11-30``): part of its spend's key."""
        return self.start.date().isoformat()

    def resets_at(self) -> str:
        """``end`` in UTC, RFC 3339 (``2026-11-30T23:00:00Z``)."""
        return self.end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def zone_of(name: str) -> tzinfo:
    """The zone ``budgets.timezone`` names (validated at config load)."""
    return UTC if name == "UTC" else zoneinfo.ZoneInfo(name)


def periods_at(ts: float, zone: tzinfo) -> dict[Window, Period]:
    """Return the day, week and month that the Unix time ``ts`` falls in, in ``zone``."""
    local = datetime.fromtimestamp(ts, zone)
    day = _midnight(local.year, local.month, local.day, zone)
    week = day - timedelta(days=local.weekday())
    month = _midnight(local.year, local.month, 1, zone)
    next_month = (_midnight(local.year + 1, 1, 1, zone) if local.month == 12
                  else _midnight(local.year, local.month + 1, 1, zone))
    return {
        "day": Period("day", day, _next_midnight(day, 1, zone)),
        "week": Period("week", week, _next_midnight(week, 7, zone)),
        "month": Period("month", month, next_month),
    }


def _midnight(year: int, month: int, day: int, zone: tzinfo) -> datetime:
    return datetime(year, month, day, tzinfo=zone)


def _next_midnight(start: datetime, days: int, zone: tzinfo) -> datetime:
    # Calendar arithmetic on the date, not 24 h steps: a day with a DST change lasts 23 or 25 h.
    date = start.date() + timedelta(days=days)
    return _midnight(date.year, date.month, date.day, zone)


class Calendar:
    """The current periods, recomputed only when the day turns (a request costs a compare)."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self._periods: dict[Window, Period] = {}
        self._until = float("-inf")
        self._from = float("inf")

    def at(self, ts: float) -> dict[Window, Period]:
        """Return the periods the Unix time ``ts`` falls in."""
        if not self._from <= ts < self._until:
            self._periods = periods_at(ts, self.zone)
            self._from = self._periods["day"].start.timestamp()
            self._until = self._periods["day"].end_ts
        return self._periods
