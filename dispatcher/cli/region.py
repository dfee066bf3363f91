"""``dispatcher region``: a region's limits and settings."""

from __future__ import annotations

import click

from ..gateway import ops
from ..seconds import Seconds
from ._app import App, echo_json, pass_app


@click.group("region")
def region() -> None:
    """Show or change the region (max SEPs, state, aging)."""


@region.command("set")
@click.option("--max-seps", type=click.IntRange(0, 100000), help="Most tasks running at once.")
@click.option(
    "--state", type=click.Choice(["running", "stopping"]), help="stopping: no new dispatch."
)
@click.option(
    "--aging-ms",
    type=click.IntRange(1, 3_600_000),
    help="A waiting request gains 1 priority per interval.",
)
@click.option("--sep-dead-after", type=Seconds(0.1, 86400), help="Seconds without heartbeat.")
@click.option(
    "--history-retention",
    type=Seconds(0, 315_360_000),
    help="Seconds to keep outcomes (at most 10 years; 0 forgets a finished request, "
    "its result and its idempotency key at the next reap).",
)
@pass_app
def set_(
    app: App,
    max_seps: int | None,
    state: str | None,
    aging_ms: int | None,
    sep_dead_after: float | None,
    history_retention: float | None,
) -> None:
    """Create the region if needed and change its settings."""
    db = app.db(ensure=True)
    op = ops.region.set_region(
        db.name,
        max_seps=max_seps,
        state=state,
        aging_ms=aging_ms,
        sep_dead_after_s=sep_dead_after,
        history_retention_s=history_retention,
    )
    row = db.run(op)
    click.echo(f"region {row['name']}: max SEPs {row['max_seps']}, {row['state']}")


@region.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_app
def show(app: App, as_json: bool) -> None:
    """Show the region's settings."""
    db = app.db()
    row = db.run(ops.region.get_region(db.name))
    row.pop("busy_seps", None)
    if as_json:
        echo_json(row)
        return
    for key in ("name", "max_seps", "state", "aging_ms", "sep_dead_after", "history_retention"):
        click.echo(f"{key:18} {row[key]}")


def register(cli: click.Group) -> None:
    region.commands["set"].name = "set"
    cli.add_command(region)
