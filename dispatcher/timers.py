"""The START API with timers, for applications and for programs (``ctx.start``).

A timer lives in the cross-region database (schema ``dispatcher_xr``: in the region
database unless DISPATCHER_CROSS_REGION_URL names another server). When it is due,
an event monitor (:mod:`dispatcher.monitor`) queues its request through the same
enqueue procedure as a client request. Every function takes a psycopg connection to
the cross-region database; passing the connection of an open transaction makes the
START part of it (it happens only if that transaction commits: CICS PROTECT).
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import psycopg

from . import cron
from .errors import InvalidValue, UnknownTimer
from .gateway import Gateway, ops
from .values import check_data, shortened

__all__ = [
    "cancel",
    "list_timers",
    "new_reqid",
    "schedule_cron",
    "start_after",
    "start_at",
    "start_in_transaction",
    "timer_clock",
]


MAX_DELAY = dt.timedelta(days=36500)  # a due time stays well inside what every part can hold


def new_reqid() -> str:
    return "t-" + secrets.token_hex(8)


def _set_timer(
    conn: psycopg.Connection[Any],
    region: str,
    transid: str,
    data: Any,
    due_at: dt.datetime | None,
    priority: int,
    reqid: str | None,
    cron_expr: str | None,
    tz: str | None,
    delay: dt.timedelta | None = None,
) -> str:
    """Set a timer due at DUE_AT, or (DUE_AT None) DELAY after the database's now."""
    check_data(data)  # the limits of every request's data (dispatcher.values)
    op = ops.timer.set_timer(
        region,
        reqid or new_reqid(),
        transid,
        data,
        priority=priority,
        due_at=due_at,
        delay=delay,
        cron=cron_expr,
        tz=tz,
    )
    return Gateway(conn).run(op)


def aware(when: dt.datetime) -> dt.datetime:
    """WHEN, a time a timer can be due at: a datetime that names its zone, at most
    MAX_DELAY ahead (else InvalidValue). The bound is a sanity check on this host's
    clock; when a timer fires is the database's clock (docs/timers.md)."""
    if not isinstance(when, dt.datetime):
        raise InvalidValue(
            f"a time is a datetime with a time zone, not {type(when).__name__} "
            f"{shortened(repr(when), 40)}"
        )
    if when.tzinfo is None or when.utcoffset() is None:
        raise InvalidValue(f"time {when.isoformat()} has no time zone (add Z or +HH:MM)")
    try:
        ahead = when.astimezone(dt.UTC) - dt.datetime.now(dt.UTC)
    except (OverflowError, ValueError):
        ahead = None
    if ahead is None or ahead > MAX_DELAY:
        raise InvalidValue(
            f"time {when.isoformat()} is more than {MAX_DELAY.days:,} days (100 years) ahead"
        )
    return when


def delay_of(after: float | dt.timedelta) -> dt.timedelta:
    """AFTER (seconds or a timedelta) as a delay a timer can hold: finite, not negative,
    at most MAX_DELAY (else InvalidValue)."""
    if isinstance(after, bool) or not isinstance(after, int | float | dt.timedelta):
        raise InvalidValue(
            f"a delay is seconds (a number) or a timedelta, not {type(after).__name__} "
            f"{shortened(repr(after), 40)}"
        )
    try:
        delay = after if isinstance(after, dt.timedelta) else dt.timedelta(seconds=float(after))
    except (OverflowError, ValueError, TypeError):
        raise InvalidValue(
            f"{shortened(repr(after), 40)} is not a delay this program can hold"
        ) from None
    if delay < dt.timedelta(0):
        raise InvalidValue("a delay cannot be negative")
    if delay > MAX_DELAY:
        raise InvalidValue(f"a delay is at most {MAX_DELAY.days:,} days (100 years)")
    return delay


def start_at(
    conn: psycopg.Connection[Any],
    region: str,
    transid: str,
    data: Any = None,
    *,
    at: dt.datetime,
    priority: int = 0,
    reqid: str | None = None,
) -> str:
    """START TRANSID at time AT; returns the timer's REQID (for cancel). A time in the
    past (on the database's clock) is now: the timer fires at once."""
    return _set_timer(conn, region, transid, data, aware(at), priority, reqid, None, None)


def start_after(
    conn: psycopg.Connection[Any],
    region: str,
    transid: str,
    data: Any = None,
    *,
    after: float | dt.timedelta,
    priority: int = 0,
    reqid: str | None = None,
) -> str:
    """START TRANSID after a delay (seconds or a timedelta) from now on the database's
    clock; returns its REQID."""
    delay = delay_of(after)
    return _set_timer(conn, region, transid, data, None, priority, reqid, None, None, delay)


def schedule_cron(
    conn: psycopg.Connection[Any],
    region: str,
    transid: str,
    data: Any = None,
    *,
    expr: str,
    tz: str | None = None,
    priority: int = 0,
    reqid: str | None = None,
) -> str:
    """START TRANSID on a cron schedule (five fields, in time zone TZ, default UTC); its
    first slot is the first after now on the database's clock."""
    due = cron.next_after(expr, timer_clock(conn), tz)
    return _set_timer(conn, region, transid, data, due, priority, reqid, expr, tz or "UTC")


def timer_clock(conn: psycopg.Connection[Any]) -> dt.datetime:
    """Now on the clock of the database holding the timers (``dispatcher_xr.clock()``)."""
    return Gateway(conn).run(ops.timer.timer_clock())


def cancel(conn: psycopg.Connection[Any], region: str, reqid: str) -> None:
    """CANCEL a pending timer or schedule; UnknownTimer if it fired already or never was."""
    if not Gateway(conn).run(ops.timer.cancel_timer(region, reqid)):
        raise UnknownTimer(
            f"no pending timer with REQID {reqid!r} in region {region!r} "
            "(it has fired already, was cancelled, or never existed)"
        )


def list_timers(conn: psycopg.Connection[Any], region: str) -> list[dict[str, Any]]:
    return Gateway(conn).run(ops.timer.list_timers(region))


def start_in_transaction(
    conn: psycopg.Connection[Any],
    region: str,
    transid: str,
    data: Any = None,
    *,
    after: float | dt.timedelta | None = None,
    at: dt.datetime | None = None,
    priority: int = 0,
    reqid: str | None = None,
) -> str:
    """``ctx.start`` with a timer: set on the task's own connection, so it takes effect
    only if the task commits (timers in the region database, the default)."""
    if at is not None and after is not None:
        raise InvalidValue("give one of after and at, not both")
    if at is not None:
        return start_at(conn, region, transid, data, at=at, priority=priority, reqid=reqid)
    assert after is not None
    return start_after(conn, region, transid, data, after=after, priority=priority, reqid=reqid)
