"""Timers of the START API and their firings, on the database holding the timers
(schema dispatcher_xr; sql/queries/timer.sql). Every time is on that database's clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from ..op import Op, Result, Row, all_rows, each, nothing, one_row, rowcount, scalar
from ..records import DueTimer

__all__ = [
    "cancel_timer",
    "claim_due_timers",
    "list_timers",
    "next_due",
    "purge_firings",
    "record_firings",
    "reqid_request",
    "set_timer",
    "timer_clock",
    "timer_fired_schedule",
    "timer_status",
    "timers_fired_once",
]


def set_timer(
    region: str,
    reqid: str,
    transid: str,
    payload: Any,
    *,
    priority: int = 0,
    due_at: dt.datetime | None = None,
    delay: dt.timedelta | None = None,
    cron: str | None = None,
    tz: str | None = None,
) -> Op[str]:
    """Set (START) a timer due at DUE_AT, or (DUE_AT None) DELAY from now on the
    database clock; its REQID."""
    params = {
        "region": region,
        "reqid": reqid,
        "transid": transid,
        "payload": Jsonb(payload),
        "priority": priority,
        "due_at": due_at,
        "delay": delay,
        "cron": cron,
        "tz": tz,
    }
    return Op("set_timer", params, scalar("set_timer", "reqid", str))


def timer_clock() -> Op[dt.datetime]:
    """Now on the clock of the database holding the timers."""
    return Op("timer_clock", {}, scalar("timer_clock", "now", _datetime))


def _datetime(value: Any) -> dt.datetime:
    assert isinstance(value, dt.datetime)
    return value


def cancel_timer(region: str, reqid: str) -> Op[bool]:
    """CANCEL a pending timer; False when there is none (fired, cancelled, never set)."""
    params = {"region": region, "reqid": reqid}
    return Op("cancel_timer", params, scalar("cancel_timer", "cancelled", bool))


def list_timers(region: str) -> Op[list[Row]]:
    return Op("list_timers", {"region": region}, all_rows)


def claim_due_timers(region: str, limit: int) -> Op[list[DueTimer]]:
    """Up to LIMIT due timers, locked (FOR UPDATE SKIP LOCKED) until the transaction ends."""
    params = {"region": region, "limit": limit}
    return Op("claim_due_timers", params, each(DueTimer.from_row))


def timer_fired_schedule(timer_id: int, next_due: dt.datetime) -> Op[None]:
    """A cron schedule fired: it is due next at NEXT_DUE."""
    return Op("timer_fired_schedule", {"id": timer_id, "next_due": next_due}, nothing)


def _seconds(result: Result) -> float | None:
    if not result.rows or result.rows[0]["in_s"] is None:
        return None
    return float(result.rows[0]["in_s"])


def next_due(region: str) -> Op[float | None]:
    """Seconds until the region's earliest timer is due (None: no timer)."""
    return Op("next_due", {"region": region}, _seconds)


def purge_firings(region: str, keep_s: float, limit: int) -> Op[int]:
    """Forget at most LIMIT firings older than KEEP_S seconds; how many went."""
    params = {"region": region, "keep_s": keep_s, "limit": limit}
    return Op("purge_firings", params, rowcount)


def timer_status(region: str) -> Op[Row]:
    """pending, next_due, lag_ms_p50_p99 and fired_last_hour."""
    return Op("timer_status", {"region": region}, one_row("timer_status"))


def record_firings(
    region: str,
    firing_ids: Sequence[str],
    reqids: Sequence[str],
    due_ats: Sequence[dt.datetime],
    request_ids: Sequence[int | None],
) -> Op[None]:
    """Record the firings of a batch (a firing already recorded is kept)."""
    params = {
        "region": region,
        "firing_ids": list(firing_ids),
        "reqids": list(reqids),
        "due_ats": list(due_ats),
        "request_ids": list(request_ids),
    }
    return Op("record_firings", params, nothing)


def timers_fired_once(ids: Sequence[int]) -> Op[int]:
    """Remove the one-shot timers IDS that fired; how many."""
    return Op("timers_fired_once", {"ids": list(ids)}, rowcount)


def reqid_request(region: str, reqid: str) -> Op[Row]:
    """request_id: the request the last firing of timer REQID queued (None: none kept);
    due_at: when it is due next while pending (None: no pending timer of that reqid)."""
    return Op("reqid_request", {"region": region, "reqid": reqid}, one_row("reqid_request"))
