"""``dispatcher start`` and ``dispatcher request``: START a task now, look at a request."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ..errors import DispatcherError, InvalidValue
from ..gateway import Gateway, ops
from ..seconds import Seconds
from ..values import check_reqid
from ._app import App, echo_json, pass_app
from ._data import DATA_HELP, parse_data, read_data
from .stats import parse_since

FINAL_STATES = ("done", "failed", "cancelled")
MAX_REF = 1000  # characters of a START reqid looked up (an idempotency key)


def parse_json(text: str, what: str) -> Any:
    """TEXT as request data: JSON, @FILE or - (see dispatcher.cli._data)."""
    if what == "--data":
        return read_data(text, what)
    return parse_data(text.encode("utf-8", "surrogatepass"), what)


def wait_for(app: App, request_id: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    db = app.db()
    delay = 0.01
    while True:
        row = db.run(ops.request.show_request(db.name, request_id))
        if row["state"] in FINAL_STATES:
            return row
        if time.monotonic() > deadline:
            raise DispatcherError(
                f"request {request_id} is still {row['state']} after {timeout:g} s"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@click.command("start")
@click.argument("transid", required=False)
@click.option("--data", "data", default=None, help=DATA_HELP)
@click.option(
    "--data-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON lines: one task per line, all started in one batch.",
)
@click.option("--priority", type=click.IntRange(0, 255), default=0, help="User priority added.")
@click.option(
    "--reqid",
    help="A name for the request (1-200 characters, no '/'); with --after, --at or "
    "--cron, the timer's name for CANCEL (1-64 letters, digits or _.:@-). "
    "A second START with the REQID of a kept request (queued, running or in the "
    "history) starts nothing and prints its id; a timer with the REQID of a pending "
    "timer is refused.",
)
@click.option("--after", help="Start after a delay: 30s, 5m, 2h, 1d.")
@click.option("--at", "at", help="Start at a time: ISO 8601 with a zone, e.g. 2026-12-01T09:00Z.")
@click.option("--cron", "cron_expr", help='Start on a schedule: "*/5 * * * *" (five fields).')
@click.option("--tz", help="Time zone of --cron (default UTC), e.g. Europe/Paris.")
@click.option(
    "--routing-key",
    help="Run on the SEP that owns this key (requests with the same key go to the same "
    "live SEP; docs/dispatch.md). Not for timers.",
)
@click.option("--wait", is_flag=True, help="Wait for the task and print its result.")
@click.option(
    "--timeout",
    type=Seconds(0, 7 * 86400, low_open=True),
    default=60.0,
    show_default=True,
    help="For --wait.",
)
@pass_app
def start(
    app: App,
    transid: str | None,
    data: str | None,
    data_file: Path | None,
    priority: int,
    reqid: str | None,
    after: str | None,
    at: str | None,
    cron_expr: str | None,
    tz: str | None,
    routing_key: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """START transaction TRANSID now (print its request id), or with a timer
    (--after, --at, --cron: print the timer's REQID, for dispatcher cancel).

    With --data-file, each line is either a JSON value (data for TRANSID) or an
    object {"transid": ..., "data": ...}.
    """
    if reqid is not None and not reqid.strip():
        raise click.UsageError("--reqid: empty (give a name, or leave the option out)")
    if after is not None or at is not None or cron_expr is not None or tz is not None:
        if wait or data_file is not None or transid is None or routing_key is not None:
            raise click.UsageError(
                "a timer START takes TRANSID and --data, not --wait, --data-file or --routing-key"
            )
        from .timers import schedule

        payload = parse_json(data, "--data") if data is not None else None
        click.echo(
            schedule(
                app,
                transid,
                payload,
                after=after,
                at=at,
                cron_expr=cron_expr,
                tz=tz,
                priority=priority,
                reqid=reqid,
            )
        )
        return
    if reqid is not None:  # (a timer's REQID has its own rule: schedule checks it)
        try:
            check_reqid(reqid)
        except InvalidValue as exc:
            raise click.UsageError(f"--reqid: {exc.message}") from None
    db = app.db()
    if data_file is not None:
        if data is not None:
            raise click.UsageError("give --data or --data-file, not both")
        items: list[tuple[str, Any]] = []
        routes: list[str | None] = []
        try:
            text = data_file.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise click.BadParameter(f"{data_file} is not UTF-8: {exc}") from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            value = parse_json(line, f"line {n} of {data_file}")
            if isinstance(value, dict) and "transid" in value:
                items.append((str(value["transid"]), value.get("data")))
                route = value.get("routing_key", routing_key)
                if route is not None and not isinstance(route, str):
                    raise click.UsageError(f"line {n}: routing_key must be a string")
                routes.append(route)
            elif transid is None:
                raise click.UsageError(f"line {n}: no transid, and no TRANSID argument given")
            else:
                items.append((transid, value))
                routes.append(routing_key)
        results = db.run(
            ops.request.enqueue_many(
                db.name, items, user_priorities=[priority] * len(items), routing_keys=routes
            )
        )
        for r in results:
            click.echo(r.request_id)
        return
    if transid is None:
        raise click.UsageError("missing TRANSID")
    payload = parse_json(data, "--data") if data is not None else None
    op = ops.request.enqueue(
        db.name,
        transid,
        payload,
        user_priority=priority,
        idempotency_key=reqid,
        routing_key=routing_key,
    )
    e = db.run(op)
    if not wait:
        click.echo(e.request_id)
        return
    row = wait_for(app, e.request_id, timeout)
    if row["state"] == "done":
        click.echo(json.dumps(row["result"]))
    else:
        click.echo(
            json.dumps({"request_id": e.request_id, "state": row["state"], "error": row["error"]}),
            err=True,
        )
        raise SystemExit(1)


@click.group("request")
def request() -> None:
    """Look at requests."""


def find_request(app: App, ref: str) -> int:
    """The request REF names: its id, or a START reqid (of `start --reqid`, with or
    without a timer: the request its last firing queued). Digits are an id first, a
    reqid when no request has that id."""
    db = app.db()
    if ref.isascii() and ref.isdigit():
        request_id = int(ref)
        if not 1 <= request_id < 2**63:
            raise click.BadParameter(f"{ref} is not a request id (1 to 2**63-1)")
        try:
            db.run(ops.request.show_request(db.name, request_id))
            return request_id
        except DispatcherError:
            pass  # no such request: perhaps a reqid of digits
    if not ref.strip() or len(ref) > MAX_REF or "\x00" in ref:
        raise click.BadParameter(
            f"{ref!r} is neither a request id nor a START reqid (1 to {MAX_REF} characters, no NUL)"
        )
    found = db.run(ops.request.request_by_key(db.name, ref))
    if found is not None:
        return found
    from .timers import xr_conn

    timer = Gateway(xr_conn(app)).run(ops.timer.reqid_request(db.name, ref))
    if timer["request_id"] is not None:
        return int(timer["request_id"])
    if timer["due_at"] is not None:
        raise click.ClickException(
            f"timer {ref!r} has not fired yet (due at {timer['due_at'].isoformat()}): "
            "no request yet (see: dispatcher timers)"
        )
    if ref.isascii() and ref.isdigit():
        raise click.ClickException(
            f"unknown request {ref} in region {db.name!r} (nor a START reqid {ref!r})"
        )
    raise click.ClickException(
        f"no request with START reqid {ref!r} in region {db.name!r} "
        "(a firing is kept 7 days; see: dispatcher request list)"
    )


@request.command("show")
@click.argument("request_ref", metavar="ID|REQID")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: App, request_ref: str, as_json: bool) -> None:
    """Show a request, by id or by START reqid: state, result or error, attempts, SEP,
    timings."""
    request_id = find_request(app, request_ref)
    db = app.db()
    row = db.run(ops.request.show_request(db.name, request_id))
    if as_json:
        echo_json(row)
        return
    for key, value in row.items():
        if isinstance(value, dict | list):
            value = json.dumps(value)
        click.echo(f"{key:14} {value}")


@request.command("list")
@click.option(
    "--state", type=click.Choice(ops.request.REQUEST_STATES), help="Only requests in this state."
)
@click.option("--transid", help="Only requests of this transaction.")
@click.option("--since", help="Only requests enqueued since: a duration (30m, 1h, 2d) or a time.")
@click.option(
    "--before",
    type=click.IntRange(1, 2**63 - 1),
    help="Only requests with a smaller id: the next page (the last id of a page).",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def list_(
    app: App,
    state: str | None,
    transid: str | None,
    since: str | None,
    before: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """List requests, newest first, a page of --limit at a time (a full page ends with
    the option for the next one, on stderr): dead letters are --state failed (then:
    request rerun)."""
    when = None if since is None else parse_since(since)
    db = app.db()
    rows = db.run(
        ops.request.list_requests(
            db.name, state=state, transid=transid, limit=limit, since=when, before=before
        )
    )
    if len(rows) == limit:
        click.echo(f"more: --before {rows[-1]['id']}", err=True)
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'ID':>10} {'TRANSID':10} {'STATE':10} {'ATT':>3}  ERROR")
    for r in rows:
        err = f"{r['error_type']}: {r['error_message']}" if r["error_type"] else ""
        line = f"{r['id']:>10} {r['transid']:10} {r['state']:10} {r['attempt']:>3}  {err}"
        click.echo(line[:200])


@request.command("cancel")
@click.argument("request_id", type=click.IntRange(1, 2**63 - 1))
@pass_app
def cancel(app: App, request_id: int) -> None:
    """Cancel a queued request: it never runs and goes to the history as cancelled. A
    request a SEP already has (dispatched or running) runs to its end: it cannot be
    cancelled (exit 1, saying so), nor can a finished one."""
    db = app.db()
    outcome = db.run(ops.request.cancel_request(db.name, request_id))
    if outcome == "cancelled":
        click.echo(f"request {request_id} cancelled")
        return
    if outcome == "running":
        raise click.ClickException(
            f"request {request_id} is already with a SEP (dispatched or running): it runs to "
            "its end and cannot be cancelled"
        )
    row = db.run(ops.request.show_request(db.name, request_id))
    raise click.ClickException(f"request {request_id} has finished ({row['state']})")


@request.command("rerun")
@click.argument("request_id", type=click.IntRange(1, 2**63 - 1))
@pass_app
def rerun(app: App, request_id: int) -> None:
    """Run a failed or cancelled request again, as a new request with the same
    transaction and data (a dead letter, after its cause is fixed); prints the new id."""
    db = app.db()
    row = db.run(ops.request.show_request(db.name, request_id))
    if row["state"] not in ("failed", "cancelled"):
        raise click.ClickException(
            f"request {request_id} is {row['state']}: only a failed or cancelled one runs again"
        )
    e = db.run(ops.request.enqueue(db.name, row["transid"], row["payload"], origin="rerun"))
    click.echo(e.request_id)


def register(cli: click.Group) -> None:
    cli.add_command(start)
    cli.add_command(request)
