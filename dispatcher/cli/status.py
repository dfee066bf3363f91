"""``dispatcher status``: what the region is doing."""

from __future__ import annotations

import time
from typing import Any

import click

from ..gateway import ops
from ..seconds import Seconds
from ._app import App, echo_json, pass_app

# Extra sections other parts add to the status (e.g. timers): name -> function(app).
SECTIONS: dict[str, Any] = {}


def collect(app: App) -> dict[str, Any]:
    db = app.db()
    row = db.run(ops.region.region_status(db.name))
    for name, fn in SECTIONS.items():
        row[name] = fn(app)
    return row


def render(row: dict[str, Any]) -> str:
    lines = [f"region {row['name']} ({row['state']}), max SEPs {row['max_seps']}"]
    seps = ", ".join(f"{k} {v}" for k, v in sorted(row["seps"].items())) or "none"
    reqs = ", ".join(f"{k} {v}" for k, v in sorted(row["requests"].items())) or "none"
    lines.append(f"  SEPs        {seps}")
    lines.append(f"  requests    {reqs}")
    bands = row["queued_by_band"]
    if bands:
        by_band = ", ".join(
            f"{k}: {bands[k]}" for k in sorted(bands, key=lambda b: -int(b.split("-")[0]))
        )
        lines.append(f"  queued by priority  {by_band}")
    oldest = row["oldest_queued"]
    if oldest:
        lines.append(
            f"  oldest waiting  request {oldest['id']} ({oldest['transid']}, priority "
            f"{oldest['priority']}), {float(oldest['age_s']):.1f} s"
        )
    lines.append(f"  listeners   {row['listeners']}, sessions {row['sessions']}")
    for name in SECTIONS:
        value = row.get(name)
        if isinstance(value, dict):
            text = ", ".join(f"{k} {v}" for k, v in value.items() if v is not None)
        else:
            text = str(value)
        lines.append(f"  {name:11} {text}")
    return "\n".join(lines)


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.option(
    "--watch",
    type=Seconds(0.1, 86400),
    default=None,
    is_flag=False,
    flag_value=2.0,
    help="Refresh every N seconds (default 2) until Ctrl-C.",
)
@pass_app
def status(app: App, as_json: bool, watch: float | None) -> None:
    """Region, max SEPs, SEPs by state, queue depth by priority band, oldest waiting
    request, listeners and sessions."""
    while True:
        row = collect(app)
        if as_json:
            echo_json(row)
        else:
            if watch:
                click.clear()
            click.echo(render(row))
        if not watch:
            return
        time.sleep(watch)


def register(cli: click.Group) -> None:
    cli.add_command(status)
