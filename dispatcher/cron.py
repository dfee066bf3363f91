"""Cron schedules: standard five-field syntax (croniter), in a time zone.

The fields name wall-clock times of the zone; :func:`next_after` turns them into real
instants (UTC), with this DST policy (docs/timers.md):

- a wall time that happens twice (clocks go back) fires once, at its first
  occurrence, unless the hour field is ``*`` (hourly, every N minutes...): such a
  schedule fires at every real instant it names, so it neither skips nor doubles;
- a wall time that does not exist (clocks go forward) fires once, shifted forward by
  the gap (02:30 on a spring-forward day in Europe/Paris fires at 03:30 CEST); when
  that instant is also a slot of the schedule, it fires once there.

Policy after downtime: a schedule whose due time passed while no monitor ran fires
once for the whole missed period, and its next firing is the next slot of the
schedule after now (not after the late time). "Now" is always the database's clock
(the caller passes it): see docs/timers.md.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

from .errors import InvalidValue

__all__ = ["next_after", "validate"]

UTC = dt.UTC
# longer than any DST shift: wall times this far around an instant are looked at
_AROUND = dt.timedelta(hours=3)


def _zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidValue(f"unknown time zone {tz!r}") from None


def validate(expr: str, tz: str | None = None) -> None:
    """Raise InvalidValue unless EXPR is a valid five-field cron expression."""
    _zone(tz)
    if len(expr.split()) != 5:
        raise InvalidValue(
            f"invalid cron expression {expr!r}: five fields, minute hour day month weekday"
        )
    try:
        croniter(expr)
    except (CroniterBadCronError, ValueError, KeyError) as exc:
        why = str(exc).replace(f"[{expr}] ", "")  # croniter's words, without the echo
        if "out of range" in why:
            why = (
                "a value is out of range "
                "(minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-7)"
            )
        raise InvalidValue(f"invalid cron expression {expr!r}: {why}") from None
    try:
        croniter(expr, dt.datetime(2000, 1, 1)).get_next(dt.datetime)
    except CroniterBadDateError:
        raise InvalidValue(f"cron expression {expr!r} names no date that exists") from None


def _every_hour(expr: str) -> bool:
    """Whether the schedule names every hour of the day (hour field ``*``)."""
    hours = croniter(expr).expanded[1]
    return hours == ["*"] or len(set(hours)) == 24


def _instants(wall: dt.datetime, zone: ZoneInfo, every_hour: bool) -> list[dt.datetime]:
    """The real instants (UTC) at which the naive wall time WALL of ZONE fires."""
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    if first == second:  # an ordinary wall time
        return [first]
    if first < second:  # it happens twice: a schedule of every hour fires at both
        return [first, second] if every_hour else [first]
    # it does not exist (fold 0 is the time shifted forward by the gap); a schedule of
    # every hour has its real instants at the wall times after the gap already
    return [] if every_hour else [first]


def _change(zone: ZoneInfo, at: dt.datetime) -> dt.timedelta:
    """How much the UTC offset of ZONE changes within _AROUND of AT (usually nothing)."""
    before = (at - _AROUND).astimezone(zone).utcoffset()
    after = (at + _AROUND).astimezone(zone).utcoffset()
    assert before is not None and after is not None
    return abs(after - before)


def next_after(expr: str, after: dt.datetime, tz: str | None = None) -> dt.datetime:
    """The first instant strictly after AFTER that the schedule names (aware, UTC)."""
    validate(expr, tz)
    if after.tzinfo is None:
        raise InvalidValue("next_after needs an aware time")
    zone = _zone(tz)
    after = after.astimezone(UTC)
    every_hour = _every_hour(expr)
    wall_after = after.astimezone(zone).replace(tzinfo=None)
    # Wall times and instants are not in the same order near a DST change: look at the
    # wall times from as much before AFTER as the clocks change near it, and keep the
    # earliest instant after AFTER, until the wall times are past it by as much as the
    # clocks change near that instant (no change: the first slot is the answer).
    it = croniter(expr, wall_after - _change(zone, after))
    best: dt.datetime | None = None
    best_wall, best_change = wall_after, dt.timedelta(0)
    while True:
        wall: dt.datetime = it.get_next(dt.datetime)
        if best is not None and wall > best_wall + best_change:
            return best
        for when in _instants(wall, zone, every_hour):
            if when > after and (best is None or when < best):
                best, best_wall, best_change = when, wall, _change(zone, when)
