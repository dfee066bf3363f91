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
    assert second.date() >= dt.date(2026, 10, 25) and second - first >= dt.timedelta(hours=1)
    third = next_after("30 2 * * *", second, "Europe/Berlin")
    assert third - second >= dt.timedelta(hours=23)


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
