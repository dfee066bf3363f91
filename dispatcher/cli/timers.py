"""``dispatcher cancel``, ``timers`` and ``monitor``: timers of the START API."""

from __future__ import annotations

import datetime as dt
import re
import signal
from typing import Any

import click
import psycopg

from .. import cron
from .. import timers as timer_api
from ..database import connect
from ..errors import DatabaseUnavailable, InvalidValue
from ..gateway import Gateway, ops
from ..monitor import Monitor
from ..values import check_timer_reqid
from ._app import App, echo_json, pass_app
from .status import SECTIONS

_DELAY = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_delay(text: str) -> dt.timedelta:
    """'30s', '5m', '1.5h', '2d', '250ms' or plain seconds."""
    m = _DELAY.match(text.strip())
    if not m:
        raise click.BadParameter(f"{text!r} is not a delay like 30s, 5m, 2h")
    try:
        delay = dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    except OverflowError:
        raise click.BadParameter(f"{text!r} is too long a delay") from None
    try:
        return timer_api.delay_of(delay)  # the bounds of every timer (100 years)
    except InvalidValue as exc:
        raise click.BadParameter(exc.message) from None


def parse_time(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO 8601 time") from None
    if when.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no time zone: add Z or +HH:MM")
    try:
        return timer_api.aware(when)
    except InvalidValue as exc:
        raise click.BadParameter(exc.message) from None


def xr_conn(app: App) -> psycopg.Connection[Any]:
    """A connection to the cross-region database (timers)."""
    url = app.settings.cross_region_url
    if url is None:
        app.db()  # migrates a fresh database
        return app.conn
    return connect(url, application_name="dispatcher-cli")


def schedule(
    app: App,
    transid: str,
    data: Any,
    *,
    after: str | None,
    at: str | None,
    cron_expr: str | None,
    tz: str | None,
    priority: int,
    reqid: str | None,
) -> str:
    if sum(x is not None for x in (after, at, cron_expr)) > 1:
        raise click.UsageError("give one of --after, --at, --cron")
    if tz is not None and not tz.strip():
        raise click.UsageError("--tz: empty (give a zone such as Europe/Paris, or leave it out)")
    if tz and not cron_expr:
        raise click.UsageError("--tz goes with --cron")
    try:  # a bad value of an option is a usage error (exit 2), found before the database
        if reqid is not None:
            check_timer_reqid(reqid)
        if cron_expr is not None:
            cron.validate(cron_expr, tz)
    except InvalidValue as exc:
        raise click.UsageError(exc.message) from None
    db = app.db()
    known = {t["transid"] for t in db.run(ops.transaction.list_transactions(db.name))}
    if transid not in known:
        from ..errors import UnknownTransaction

        raise UnknownTransaction(
            f"unknown transaction {transid!r} in region {db.name!r}",
            hint="define it with: dispatcher tx define",
        )
    conn = xr_conn(app)
    name = app.settings.region
    if cron_expr is not None:
        return timer_api.schedule_cron(
            conn, name, transid, data, expr=cron_expr, tz=tz, priority=priority, reqid=reqid
        )
    if at is not None:
        return timer_api.start_at(
            conn, name, transid, data, at=parse_time(at), priority=priority, reqid=reqid
        )
    assert after is not None
    return timer_api.start_after(
        conn, name, transid, data, after=parse_delay(after), priority=priority, reqid=reqid
    )


@click.command("cancel")
@click.argument("reqid")
@pass_app
def cancel(app: App, reqid: str) -> None:
    """CANCEL the pending timer or schedule REQID."""
    try:
        check_timer_reqid(reqid)  # (no timer can have another name)
    except InvalidValue as exc:
        raise click.BadParameter(exc.message, param_hint="'REQID'") from None
    timer_api.cancel(xr_conn(app), app.settings.region, reqid)
    click.echo(f"cancelled {reqid}")


@click.command("timers")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def timers(app: App, as_json: bool) -> None:
    """List pending timers and cron schedules with their next due time."""
    rows = timer_api.list_timers(xr_conn(app), app.settings.region)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no pending timers")
        return
    click.echo(f"{'REQID':22} {'TRANSID':10} {'NEXT DUE (UTC)':20} SCHEDULE")
    for r in rows:
        sched = f"{r['cron']} ({r['tz']})" if r["cron"] else "once"
        click.echo(
            f"{r['reqid']:22} {r['transid']:10} "
            f"{r['due_at'].astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}  {sched}"
        )


@click.command("monitor")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None)
@pass_app
def monitor(app: App, metrics_port: int | None) -> None:
    """Run an event monitor: fire due timers into the region (any number may run)."""
    app.db(ensure=True)
    if app.settings.cross_region_url:
        from .. import migrate

        migrate.install_cross_region(app.settings.cross_region_url)
    url = app.process_url("monitor")
    app.close()
    if metrics_port is not None:
        from ..metrics import serve_metrics

        serve_metrics(metrics_port, url, app.settings.region)
    m = Monitor(url, app.settings.region, app.settings.cross_region_url)
    signal.signal(signal.SIGTERM, lambda *_: m.stop())
    signal.signal(signal.SIGINT, lambda *_: m.stop())
    m.run()


def _status(app: App) -> dict[str, Any]:
    try:
        row = Gateway(xr_conn(app)).run(ops.timer.timer_status(app.settings.region))
    except (psycopg.Error, DatabaseUnavailable):
        return {"unavailable": True}
    lag = row["lag_ms_p50_p99"] or [None, None]
    return {
        "pending": row["pending"],
        "next_due": row["next_due"],
        "fired_last_hour": row["fired_last_hour"],
        "lag_ms_p50": None if lag[0] is None else round(float(lag[0]), 1),
        "lag_ms_p99": None if lag[1] is None else round(float(lag[1]), 1),
    }


SECTIONS["timers"] = _status


def register(cli: click.Group) -> None:
    cli.add_command(cancel)
    cli.add_command(timers)
    cli.add_command(monitor)
