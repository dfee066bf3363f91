"""The timer routes of the HTTP front: START (after a delay, at a time, on a cron
schedule) and CANCEL, on the database holding the timers (the region database, or
DISPATCHER_CROSS_REGION_URL), with the checks of dispatcher/timers.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dispatcher import cron
from dispatcher.errors import InvalidValue
from dispatcher.gateway import ops
from dispatcher.timers import aware, delay_of, new_reqid
from dispatcher.values import check_data, check_text, check_timer_reqid

from .http_problems import Problem, from_error

if TYPE_CHECKING:
    from .http import HttpFront

__all__ = ["cancel_timer", "create_timer", "handler"]

Route = Callable[["HttpFront", web.Request], Awaitable[web.StreamResponse]]


def handler(
    front: HttpFront, route: Route
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await route(front, request)

    handle.__name__ = route.__name__
    return handle


def _text(body: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise Problem("bad_frame", f"a timer needs {name!r} (a string)")
        return None
    if not isinstance(value, str):
        raise Problem("bad_frame", f"{name!r} must be a string")
    try:
        check_text(value, f"the {name}")
    except InvalidValue as exc:
        raise Problem("invalid_value", exc.message) from None
    return value


def _delay(after: Any) -> dt.timedelta:
    if isinstance(after, bool) or not isinstance(after, int | float):
        raise Problem("bad_frame", "'after' must be a number of seconds")
    try:
        return delay_of(after)  # the bounds of every timer (dispatcher/timers.py)
    except InvalidValue as exc:
        raise from_error(exc) from None


def _time(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Problem("invalid_value", f"{text[:80]!r} is not an ISO 8601 time") from None
    try:
        return aware(when)
    except InvalidValue as exc:  # (no time zone, or too far ahead)
        raise from_error(exc) from None


TIMER_FIELDS = frozenset({"transid", "data", "reqid", "after", "at", "cron", "tz"})


async def create_timer(front: HttpFront, request: web.Request) -> web.StreamResponse:
    """POST /v1/timers: START a transaction after a delay, at a time or on a schedule."""
    tok = await front.authorize(request)
    body = await front.json_body(request)
    if not isinstance(body, dict):
        raise Problem("bad_frame", "the body must be a JSON object")
    unknown = sorted(set(body) - TIMER_FIELDS)
    if unknown:  # (a misspelt 'after' must not START at once)
        names = ", ".join(repr(k[:40]) for k in unknown[:5])
        raise Problem(
            "bad_frame",
            f"unknown field(s) {names}: a timer has {', '.join(sorted(TIMER_FIELDS))}",
        )
    transid = _text(body, "transid", required=True)
    assert transid is not None
    data = body.get("data")
    try:
        check_data(data)
    except InvalidValue as exc:
        raise Problem("invalid_value", exc.message) from None
    reqid = _text(body, "reqid")
    try:  # the timer rule, before the database is asked (as the CLI checks it)
        if reqid is not None:
            check_timer_reqid(reqid)
    except InvalidValue as exc:
        raise Problem("invalid_value", exc.message) from None
    whens = [k for k in ("after", "at", "cron") if body.get(k) is not None]
    if len(whens) != 1:
        raise Problem("bad_frame", "give exactly one of 'after', 'at', 'cron'")
    at = _text(body, "at")
    expr = _text(body, "cron")
    tz = _text(body, "tz")
    if tz is not None and expr is None:
        raise Problem("bad_frame", "'tz' goes with 'cron'")
    if tok.allow is not None and transid not in tok.allow:
        raise Problem("forbidden", f"this token may not run {transid}")
    async with front.db() as db:
        known = {
            t["transid"] for t in await db.run(ops.transaction.list_transactions(front.region))
        }
    if transid not in known:
        raise Problem("unknown_transaction", f"unknown transaction {transid!r}")
    reqid = reqid or new_reqid()
    region = front.region
    async with front.db(timers=True) as xr:
        if expr is not None:
            now = await xr.run(ops.timer.timer_clock())
            try:
                due = cron.next_after(expr, now, tz)
            except InvalidValue as exc:
                raise from_error(exc) from None
            op = ops.timer.set_timer(
                region,
                reqid,
                transid,
                data,
                priority=tok.priority,
                due_at=due,
                cron=expr,
                tz=tz or "UTC",
            )
        elif at is not None:
            op = ops.timer.set_timer(
                region, reqid, transid, data, priority=tok.priority, due_at=_time(at)
            )
        else:
            delay = _delay(body["after"])
            op = ops.timer.set_timer(
                region, reqid, transid, data, priority=tok.priority, delay=delay
            )
        reqid = await xr.run(op)
    front.log.info("http_timer_set", reqid=reqid, transid=transid)
    return web.json_response(
        {"reqid": reqid, "transid": transid},
        status=201,
        headers={"Location": f"/v1/timers/{reqid}"},
    )


async def cancel_timer(front: HttpFront, request: web.Request) -> web.StreamResponse:
    """DELETE /v1/timers/{reqid}: CANCEL a pending timer or schedule (404: none)."""
    reqid = request.match_info["reqid"]
    tok = await front.authorize(request)
    async with front.db(timers=True) as xr:
        if tok.allow is not None:
            rows = await xr.run(ops.timer.list_timers(front.region))
            mine = [r for r in rows if r["reqid"] == reqid]
            if mine and mine[0]["transid"] not in tok.allow:
                raise Problem("forbidden", f"this token may not cancel {mine[0]['transid']}")
        cancelled = await xr.run(ops.timer.cancel_timer(front.region, reqid))
    if not cancelled:
        raise Problem(
            "unknown_timer",
            f"no pending timer with reqid {reqid!r} (it has fired, was cancelled, or never was)",
        )
    front.log.info("http_timer_cancelled", reqid=reqid)
    return web.Response(status=204)
