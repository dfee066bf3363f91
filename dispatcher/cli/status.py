"""``dispatcher status``: what the region is doing."""

from __future__ import annotations

import click

from ._app import App, echo_json, pass_app


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def status(app: App, as_json: bool) -> None:
    """Region, max SEPs, SEPs by state, requests by state, oldest queued age."""
    row = app.region().status()
    row["oldest_queued_s"] = (
        None if row["oldest_queued_s"] is None else float(row["oldest_queued_s"])
    )
    if as_json:
        echo_json(row)
        return
    click.echo(f"region {row['name']} ({row['state']}), max SEPs {row['max_seps']}")
    seps = ", ".join(f"{k} {v}" for k, v in sorted(row["seps"].items())) or "none"
    reqs = ", ".join(f"{k} {v}" for k, v in sorted(row["requests"].items())) or "none"
    click.echo(f"SEPs:     {seps}")
    click.echo(f"requests: {reqs}")
    if row["oldest_queued_s"] is not None:
        click.echo(f"oldest queued: {row['oldest_queued_s']:.1f} s")
    click.echo(f"sessions: {row['sessions']}")


def register(cli: click.Group) -> None:
    cli.add_command(status)
