"""Cron due times: DST, month ends, and the catch-up policy after downtime."""

from __future__ import annotations

import datetime as dt

import pytest

from dispatcher.cron import next_after, validate
from dispatcher.errors import InvalidValue

UTC = dt.UTC


def t(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def test_every_five_minutes() -> None:
    """*/5 fires on the next multiple of five minutes, strictly after."""
    assert next_after("*/5 * * * *", t(2026, 1, 1, 0, 3)) == t(2026, 1, 1, 0, 5)
    assert next_after("*/5 * * * *", t(2026, 1, 1, 0, 5)) == t(2026, 1, 1, 0, 10)


def test_month_ends() -> None:
    """Day 31 skips months without one; Feb 29 waits for a leap year."""
    assert next_after("0 0 31 * *", t(2026, 4, 1)) == t(2026, 5, 31)
    assert next_after("0 0 31 * *", t(2026, 5, 31, 0, 0)) == t(2026, 7, 31)
    assert next_after("0 12 29 2 *", t(2026, 3, 1)) == t(2028, 2, 29, 12)
    assert next_after("0 0 1 * *", t(2026, 12, 31, 23, 59)) == t(2027, 1, 1)


def test_dst_spring_forward_berlin() -> None:
    """02:30 does not exist on 2026-03-29 in Berlin: the firing moves, but happens once."""
    first = next_after("30 2 * * *", t(2026, 3, 28, 12), "Europe/Berlin")
    second = next_after("30 2 * * *", first, "Europe/Berlin")
    assert first.date() == dt.date(2026, 3, 29)
    assert second == t(2026, 3, 30, 0, 30)  # 02:30 CEST


def test_dst_fall_back_berlin_fires_once() -> None:
    """02:30 happens twice on 2026-10-25 in Berlin; the schedule fires once that day."""
    first = next_after("30 2 * * *", t(2026, 10, 24, 12), "Europe/Berlin")
    second = next_after("30 2 * * *", first, "Europe/Berlin")
    assert first == t(2026, 10, 25, 0, 30)  # 02:30 CEST
    assert second == t(2026, 10, 26, 1, 30)  # 02:30 CET, the next day


def _chain(expr: str, tz: str, start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The instants a monitor fires in [start, end): each firing computes the next from
    a moment just after the slot it fired (as the monitor does, on the database clock)."""
    out: list[dt.datetime] = []
    slot = next_after(expr, start, tz)
    while slot < end:
        out.append(slot)
        slot = next_after(expr, slot + dt.timedelta(milliseconds=30), tz)
    return out


@pytest.mark.parametrize(
    ("expr", "tz", "day", "expected"),
    [
        # 02:30 happens twice in Paris on 2026-10-25: once, at 02:30 CEST
        ("30 2 * * *", "Europe/Paris", (2026, 10, 25), [t(2026, 10, 25, 0, 30)]),
        # 01:15 happens twice in New York on 2026-11-01: once, at 01:15 EDT
        ("15 1 * * *", "America/New_York", (2026, 11, 1), [t(2026, 11, 1, 5, 15)]),
        # 02:30 does not exist in Paris on 2026-03-29: once, shifted to 03:30 CEST
        ("30 2 * * *", "Europe/Paris", (2026, 3, 29), [t(2026, 3, 29, 1, 30)]),
        # 02:30 does not exist in New York on 2026-03-08: once, at 03:30 EDT
        ("30 2 * * *", "America/New_York", (2026, 3, 8), [t(2026, 3, 8, 7, 30)]),
        # two wall times in the gap, shifted onto slots of the schedule: once each
        (
            "0,30 2,3 * * *",
            "Europe/Paris",
            (2026, 3, 29),
            [t(2026, 3, 29, 1), t(2026, 3, 29, 1, 30)],
        ),
    ],
)
def test_daily_schedule_fires_once_on_dst_days(
    expr: str, tz: str, day: tuple[int, int, int], expected: list[dt.datetime]
) -> None:
    """A daily wall time that happens twice, or not at all, fires once that day."""
    start = t(*day) - dt.timedelta(hours=14)
    assert _chain(expr, tz, start, start + dt.timedelta(hours=38)) == expected


@pytest.mark.parametrize(
    ("tz", "day"),
    [
        ("Europe/Paris", (2026, 3, 29)),
        ("Europe/Paris", (2026, 10, 25)),
        ("America/New_York", (2026, 3, 8)),
        ("America/New_York", (2026, 11, 1)),
        ("Australia/Lord_Howe", (2026, 4, 5)),  # a 30-minute DST change
        ("Australia/Lord_Howe", (2026, 10, 4)),
    ],
)
@pytest.mark.parametrize(
    ("expr", "minutes"),
    [
        ("* * * * *", set(range(60))),
        ("*/7 * * * *", set(range(0, 60, 7))),
        ("30 * * * *", {30}),
        ("0,45 * * * *", {0, 45}),
    ],
)
def test_hourly_and_minutely_schedules_keep_every_real_instant(
    expr: str, minutes: set[int], tz: str, day: tuple[int, int, int]
) -> None:
    """Across DST changes, schedules whose hour field is * fire at every real instant
    whose local minute matches, each once: none skipped, none doubled."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(tz)
    start = dt.datetime(*day, 1, tzinfo=zone).astimezone(UTC)
    end = start + dt.timedelta(hours=3)  # the change is at 02:00 local
    expected = []
    at = start + dt.timedelta(minutes=1)
    while at < end:
        if at.astimezone(zone).minute in minutes:
            expected.append(at)
        at += dt.timedelta(minutes=1)
    got = _chain(expr, tz, start, end)
    assert got == expected
    assert start.astimezone(zone).utcoffset() != end.astimezone(zone).utcoffset()


def test_weekly_in_new_york() -> None:
    """Mondays at 09:00 New York time, across the November DST change."""
    assert next_after("0 9 * * 1", t(2026, 10, 27), "America/New_York") == t(2026, 11, 2, 14)
    assert next_after("0 9 * * 1", t(2026, 10, 20), "America/New_York") == t(2026, 10, 26, 13)


def test_catch_up_is_one_firing_then_the_schedule() -> None:
    """After 3 hours down, the next due time is computed from now, not from the late slot:
    the missed period gives one firing, not one per missed slot."""
    now = t(2026, 6, 1, 12, 7)
    assert next_after("*/5 * * * *", now) == t(2026, 6, 1, 12, 10)


def test_invalid_expressions_and_zones() -> None:
    """Bad expressions and unknown zones are InvalidValue with a clear message."""
    for bad in ("* * * *", "61 * * * *", "every minute", "* * * * * *"):
        with pytest.raises(InvalidValue, match="invalid cron"):
            validate(bad)
    with pytest.raises(InvalidValue, match="unknown time zone"):
        validate("* * * * *", "Mars/Olympus")
