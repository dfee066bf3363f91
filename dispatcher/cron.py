"""Cron schedules: standard five-field syntax (croniter), in a time zone.

Policy after downtime: a schedule whose due time passed while no monitor ran fires
once for the whole missed period, and its next firing is the next slot of the
schedule after now (not after the late time): see docs/timers.md.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .errors import InvalidValue

__all__ = ["next_after", "validate"]


def _zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidValue(f"unknown time zone {tz!r}") from None


def validate(expr: str, tz: str | None = None) -> None:
    """Raise InvalidValue unless EXPR is a valid five-field cron expression."""
    _zone(tz)
    if len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise InvalidValue(
            f"invalid cron expression {expr!r}: five fields, minute hour day month weekday"
        )


def next_after(expr: str, after: dt.datetime, tz: str | None = None) -> dt.datetime:
    """The first time strictly after AFTER that the schedule names (aware, UTC)."""
    validate(expr, tz)
    zone = _zone(tz)
    start = after.astimezone(zone)
    nxt: dt.datetime = croniter(expr, start).get_next(dt.datetime)
    return nxt.astimezone(dt.UTC)
