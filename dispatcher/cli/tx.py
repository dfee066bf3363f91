"""``dispatcher tx``: transaction definitions and classes."""

from __future__ import annotations

import click
from click.core import ParameterSource

from ..gateway import ops
from ..gateway.ops.transaction import TRANSACTION_FIELDS
from ..seconds import Seconds
from ._app import App, echo_json, pass_app, values_are_usage_errors


@click.group("tx")
def tx() -> None:
    """Transaction definitions (TRANSID -> program) and transaction classes."""


# The limits of tx define (also checked by define_transaction_v2; docs/sep.md, "Retries").
MAX_TIMEOUT_S = 30 * 86400.0
MAX_ATTEMPTS = 100_000
MAX_RETRY_BACKOFF_S = 86400.0
MAX_MAX_BACKOFF_S = 7 * 86400.0

# option name -> the field of define_transaction_v2 it sets
_FIELD_OF = {
    "program": "program",
    "priority": "priority",
    "cls": "class",
    "timeout": "timeout",
    "max_attempts": "max_attempts",
    "retry_backoff": "retry_backoff",
    "max_backoff": "max_backoff",
    "requires": "requires",
    "description": "description",
}


@tx.command("define")
@click.argument("transid")
@click.option("--program", help="module.path:function (required for a new TRANSID).")
@click.option("--priority", type=click.IntRange(0, 255), help="0-255 (a new TRANSID: 0)")
@click.option("--class", "cls", help="Transaction class (caps how many run at once); '' for none.")
@click.option(
    "--timeout",
    type=Seconds(0, MAX_TIMEOUT_S),
    help="Seconds a task may run, at most 30 days; 0 for no timeout (a new TRANSID: none)",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1, MAX_ATTEMPTS),
    help=f"Runs of an abending request, 1-{MAX_ATTEMPTS} (a new TRANSID: 1)",
)
@click.option(
    "--retry-backoff",
    type=Seconds(0, MAX_RETRY_BACKOFF_S),
    help="Seconds before the 2nd attempt, doubled at each retry, at most 1 day (a new TRANSID: 2)",
)
@click.option(
    "--max-backoff",
    type=Seconds(0, MAX_MAX_BACKOFF_S),
    help="Cap of the retry backoff (+-10% jitter), at most 7 days (a new TRANSID: 3600)",
)
@click.option("--requires", multiple=True, help="SEP capability needed (repeatable); '' for none.")
@click.option("--description")
@click.option(
    "--release",
    multiple=True,
    type=click.Choice([*TRANSACTION_FIELDS, "all"]),
    help="Hand a field you set back to the app: the next tx sync sets it (repeatable).",
)
@pass_app
@values_are_usage_errors
def define(
    app: App,
    transid: str,
    program: str | None,
    priority: int | None,
    cls: str | None,
    timeout: float | None,
    max_attempts: int | None,
    retry_backoff: float | None,
    max_backoff: float | None,
    requires: tuple[str, ...],
    description: str | None,
    release: tuple[str, ...],
) -> None:
    """Define (or redefine) transaction TRANSID.

    Only the options given change; the fields you set stick: tx sync (run by sep start
    and up) leaves them as you set them until you set them again or --release them."""
    ctx = click.get_current_context()
    given = [
        field
        for name, field in _FIELD_OF.items()
        if ctx.get_parameter_source(name)
        in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    ]
    if not given and not release:
        raise click.UsageError("nothing to define: give --program and/or other options")
    db = app.db()
    op = ops.transaction.define_transaction(
        db.name,
        transid,
        program,
        priority=priority,
        cls=cls or None,
        timeout_s=timeout or None,
        max_attempts=max_attempts,
        retry_backoff_s=retry_backoff,
        max_backoff_s=max_backoff,
        requires=[r for r in requires if r],
        description=description,
        given=given,
        by="operator",
        release=TRANSACTION_FIELDS if "all" in release else release,
    )
    row = db.run(op)
    click.echo(f"defined {row['transid']} -> {row['program']} (priority {row['priority']})")


@tx.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def list_(app: App, as_json: bool) -> None:
    """List the region's transactions (* marks what an operator set with tx define)."""
    db = app.db()
    rows = db.run(ops.transaction.list_transactions(db.name))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no transactions defined (dispatcher tx define, or tx sync --app MODULE)")
        return
    click.echo(
        f"{'TRANSID':12} {'PRIO':>5} {'CLASS':10} {'TIMEOUT':>8} {'ATTEMPTS':>9} "
        f"{'BACKOFF':>8} {'MAXBACKOFF':>10}  PROGRAM"
    )
    for r in rows:
        mine = set(r["operator_set"])
        timeout = "-" if r["timeout_s"] is None else f"{r['timeout_s']:g}"
        cells = [
            _mark(r["priority"], "priority" in mine).rjust(5),
            _mark(r["class"] or "-", "class" in mine).ljust(10),
            _mark(timeout, "timeout" in mine).rjust(8),
            _mark(r["max_attempts"], "max_attempts" in mine).rjust(9),
            _mark(f"{r['retry_backoff_s']:g}", "retry_backoff" in mine).rjust(8),
            _mark(f"{r['max_backoff_s']:g}", "max_backoff" in mine).rjust(10),
        ]
        requires = ",".join(r["requires"])
        requires = f"  requires {_mark(requires, 'requires' in mine)}" if requires else ""
        click.echo(
            f"{r['transid']:12} {' '.join(cells)}  "
            f"{_mark(r['program'], 'program' in mine)}{requires}"
        )


def _mark(value: object, operator_set: bool) -> str:
    """A cell of tx list: the value, with * when an operator set it."""
    return f"{value}*" if operator_set else str(value)


@tx.command("delete")
@click.argument("transid")
@pass_app
def delete(app: App, transid: str) -> None:
    """Delete transaction TRANSID. Refused while requests of it are queued or running
    (it says how many: let them end, or cancel the queued ones). A SEP whose app still
    has a @program of that name defines it again when it starts."""
    db = app.db()
    out = db.run(ops.transaction.delete_transaction(db.name, transid))
    if not out["found"]:
        raise click.ClickException(f"unknown transaction {transid!r} in region {db.name!r}")
    if not out["deleted"]:
        n = out["waiting"]
        raise click.ClickException(
            f"{n} request{'s' if n != 1 else ''} of {transid} {'are' if n != 1 else 'is'} "
            f"queued or running: let {'them' if n != 1 else 'it'} end, or cancel the queued "
            f"ones (dispatcher request list --transid {transid} --state queued)"
        )
    click.echo(f"transaction {transid} deleted")


@tx.command("sync")
@click.option(
    "--app", "app_module", required=True, help="Module whose @program functions to store."
)
@pass_app
def sync(app: App, app_module: str) -> None:
    """Store the transactions that an app module declares with @program."""
    from sep.program import sync_app

    names = sync_app(app.db(), app_module)
    click.echo(f"synced {len(names)} transaction(s): {', '.join(sorted(names))}")


@tx.group("class")
def class_() -> None:
    """Transaction classes: caps on tasks running at once per class."""


@class_.command("set")
@click.argument("name")
@click.option("--max-active", type=click.IntRange(0, 2**31 - 1), required=True)
@pass_app
@values_are_usage_errors
def class_set(app: App, name: str, max_active: int) -> None:
    """Create or resize transaction class NAME."""
    db = app.db()
    row = db.run(ops.transaction.set_class(db.name, name, max_active))
    click.echo(f"class {row['name']}: max active {row['max_active']}")


@class_.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def class_list(app: App, as_json: bool) -> None:
    """List transaction classes with their active counts."""
    db = app.db()
    rows = db.run(ops.transaction.list_classes(db.name))
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:12} active {r['active']}/{r['max_active']}")


def register(cli: click.Group) -> None:
    tx.commands["list"].name = "list"
    cli.add_command(tx)
