"""``dispatcher tx``: transaction definitions and classes."""

from __future__ import annotations

import click

from ._app import App, echo_json, pass_app


@click.group("tx")
def tx() -> None:
    """Transaction definitions (TRANSID -> program) and transaction classes."""


@tx.command("define")
@click.argument("transid")
@click.option("--program", required=True, help="module.path:function")
@click.option("--priority", type=click.IntRange(0, 255), default=0, show_default=True)
@click.option("--class", "cls", help="Transaction class (caps how many run at once).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds.")
@click.option("--max-attempts", type=click.IntRange(1), default=1, show_default=True)
@click.option("--requires", multiple=True, help="SEP capability needed (repeatable).")
@click.option("--description", default="")
@pass_app
def define(
    app: App,
    transid: str,
    program: str,
    priority: int,
    cls: str | None,
    timeout: float | None,
    max_attempts: int,
    requires: tuple[str, ...],
    description: str,
) -> None:
    """Define (or redefine) transaction TRANSID."""
    row = app.region(ensure=True).define_transaction(
        transid,
        program,
        priority=priority,
        cls=cls,
        timeout_s=timeout,
        max_attempts=max_attempts,
        requires=requires,
        description=description,
    )
    click.echo(f"defined {row['transid']} -> {row['program']} (priority {row['priority']})")


@tx.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def list_(app: App, as_json: bool) -> None:
    """List the region's transactions."""
    rows = app.region().transactions()
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no transactions defined (dispatcher tx define, or tx sync --app MODULE)")
        return
    click.echo(f"{'TRANSID':12} {'PRIO':>4} {'CLASS':10} PROGRAM")
    for r in rows:
        click.echo(f"{r['transid']:12} {r['priority']:>4} {r['class'] or '-':10} {r['program']}")


@tx.command("sync")
@click.option(
    "--app", "app_module", required=True, help="Module whose @program functions to store."
)
@pass_app
def sync(app: App, app_module: str) -> None:
    """Store the transactions that an app module declares with @program."""
    from sep.program import sync_app

    names = sync_app(app.region(ensure=True), app_module)
    click.echo(f"synced {len(names)} transaction(s): {', '.join(sorted(names))}")


@tx.group("class")
def class_() -> None:
    """Transaction classes: caps on tasks running at once per class."""


@class_.command("set")
@click.argument("name")
@click.option("--max-active", type=click.IntRange(0), required=True)
@pass_app
def class_set(app: App, name: str, max_active: int) -> None:
    """Create or resize transaction class NAME."""
    row = app.region(ensure=True).set_class(name, max_active)
    click.echo(f"class {row['name']}: max active {row['max_active']}")


@class_.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def class_list(app: App, as_json: bool) -> None:
    """List transaction classes with their active counts."""
    rows = app.region().classes()
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:12} active {r['active']}/{r['max_active']}")


def register(cli: click.Group) -> None:
    tx.commands["list"].name = "list"
    cli.add_command(tx)
