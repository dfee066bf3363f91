"""``dispatcher sep``: start, list, stop, pause and resume SEPs.

The CLI is the one place that knows every part, so it may import ``sep``. Operator
actions go through the database (state + NOTIFY), so they work for SEPs on any host.
"""

from __future__ import annotations

import os
from typing import Any

import click

from sep.options import click_options, make_config

from ..gateway import ops
from ._app import App, echo_json, pass_app, say


@click.group("sep")
def sep() -> None:
    """SEPs: the processes that run tasks."""


@sep.command("start")
@click_options(app_required=True)
@click.option(
    "--count",
    type=click.IntRange(1, 1000),
    default=None,
    help="SEP processes [default: one per core].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics of the region here.",
)
@pass_app
def start(
    app: App, sep_options: dict[str, Any], count: int | None, metrics_port: int | None
) -> None:
    """Start SEP processes and supervise them in the foreground (Ctrl-C stops them
    gracefully: each finishes its task first)."""
    from sep.program import AppError, sync_app
    from sep.supervisor import Supervisor

    config = make_config(app.process_url("sep"), app.settings.region, sep_options)
    assert config.app is not None  # required
    db = app.db()
    try:
        names = sync_app(db, config.app)
    except AppError as exc:
        raise click.UsageError(str(exc)) from None
    say(
        app,
        f"synced {len(names)} transaction(s): {', '.join(sorted(names))}",
        "transactions_synced",
        transactions=sorted(names),
    )
    supervisor = Supervisor(config, count or os.cpu_count() or 1)
    supervisor.check_room()
    app.close()
    if metrics_port is not None:
        from ..metrics import serve_metrics

        serve_metrics(metrics_port, config.url, app.settings.region)
    raise SystemExit(supervisor.run())


@sep.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def list_(app: App, as_json: bool) -> None:
    """List the region's SEPs: id, host, pid, state, current request, heartbeat, tasks run,
    capabilities (app:MODULE for the app a SEP runs)."""
    db = app.db()
    rows = db.run(ops.sep.list_seps(db.name))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no SEPs (start some with: dispatcher sep start --app MODULE)")
        return
    click.echo(
        f"{'ID':>5} {'HOST':16} {'PID':>7} {'STATE':16} {'REQUEST':>9} {'TASKS':>8}  HEARTBEAT"
    )
    for r in rows:
        state = r["state"]
        if r["stop_requested"] and state == "busy":
            state += " (stopping)"  # finishes its task, then drains and leaves
        elif r["paused"] and state == "busy":
            state += " (pausing)"
        state += " (standby)" if r["standby"] else ""
        click.echo(
            f"{r['id']:>5} {r['host'][:16]:16} {r['pid']:>7} {state:16} "
            f"{_request_cell(r):>9} {r['tasks_run']:>8}  "
            f"{r['heartbeat_at']:%H:%M:%S} ({r['heartbeat_age_s']:.0f} s ago)"
            + ("  SILENT: will be declared dead" if r["silent"] else "")
            + (f"  [{', '.join(r['capabilities'])}]" if r.get("capabilities") else "")
        )


def _request_cell(row: dict[str, Any]) -> str:
    """The request in hand, and how many more a batch holds (--batch K)."""
    cell = str(row["current_request"] or "-")
    held = len(row.get("held") or [])
    return f"{cell}+{held}" if held else cell


def _control(app: App, action: str, sep_ids: tuple[int, ...], all_: bool) -> None:
    if all_ and sep_ids:
        raise click.UsageError("name SEP ids or --all, not both")
    db = app.db()
    if all_:
        seps = db.run(ops.sep.list_seps(db.name))
        sep_ids = tuple(int(r["id"]) for r in seps if r["state"] != "dead")
    if not sep_ids:
        raise click.UsageError("name a SEP id, or --all")
    for sep_id in sep_ids:
        row = db.run(ops.sep.control_sep(sep_id, action))
        click.echo(f"SEP {sep_id}: {action} ({row['state']})")


@sep.command("stop")
@click.argument("sep_ids", nargs=-1, type=click.IntRange(1, 2**63 - 1))
@click.option("--all", "all_", is_flag=True, help="Every SEP of the region.")
@click.option("--force", is_flag=True, help="Abandon the task (it is re-queued).")
@pass_app
def stop(app: App, sep_ids: tuple[int, ...], all_: bool, force: bool) -> None:
    """Stop SEPs: gracefully (finish the task, take no new one), or --force."""
    _control(app, "kill" if force else "stop", sep_ids, all_)


@sep.command("pause")
@click.argument("sep_ids", nargs=-1, type=click.IntRange(1, 2**63 - 1), required=True)
@pass_app
def pause(app: App, sep_ids: tuple[int, ...]) -> None:
    """Make SEPs unavailable for new work (the running task finishes)."""
    _control(app, "pause", sep_ids, False)


@sep.command("resume")
@click.argument("sep_ids", nargs=-1, type=click.IntRange(1, 2**63 - 1), required=True)
@pass_app
def resume(app: App, sep_ids: tuple[int, ...]) -> None:
    """Make paused SEPs available again."""
    _control(app, "resume", sep_ids, False)


def register(cli: click.Group) -> None:
    sep.commands["list"].name = "list"
    cli.add_command(sep)
