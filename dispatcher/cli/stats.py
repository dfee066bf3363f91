"""``dispatcher stats``: statistics per transaction and per region."""

from __future__ import annotations

import datetime as dt
import re

import click

from ..stats import region_stats, transaction_stats
from ._app import App, echo_json, pass_app

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> dt.datetime:
    """'1h', '30m', '2d' ago, or an ISO 8601 time."""
    m = _DURATION.match(text.strip())
    if m:
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
        try:
            return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)
        except OverflowError:  # before year 1: everything there is
            return dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a duration (30m, 1h, 2d) nor an ISO time"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _fmt(p: dict[str, float | None]) -> str:
    return "/".join("-" if v is None else f"{v:.1f}" for v in p.values())


@click.command("stats")
@click.option("--since", default="1h", show_default=True, help="Duration (30m, 1h, 2d) or time.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def stats(app: App, since: str, as_json: bool) -> None:
    """Per transaction: count, abends, retries, latency p50/p95/p99; per region: peaks."""
    when = parse_since(since)
    region = app.db()
    per_tx = transaction_stats(region, when)
    per_region = region_stats(region, when)
    if as_json:
        echo_json(
            {
                "since": when,
                "region": region.name,
                "transactions": per_tx,
                **{"region_stats": per_region},
            }
        )
        return
    click.echo(f"region {region.name} since {when.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S}Z")
    click.echo(
        f"  tasks {per_region['tasks']}, peak running {per_region['peak_running']} of max "
        f"{per_region['max_seps']}, at max SEPs {per_region['times_at_max_seps']} times "
        f"for {per_region['seconds_at_max_seps']:.1f} s, queued ms p50/p95/p99 "
        f"{_fmt(per_region['queued_ms'])}"
    )
    if not per_tx:
        click.echo("  no finished requests in this period")
        return
    click.echo(
        f"\n{'TRANSID':12} {'COUNT':>7} {'ABENDS':>7} {'RETRIES':>7}  "
        f"{'START ms p50/p95/p99':>22}  {'RESPONSE ms p50/p95/p99':>24}"
    )
    for t in per_tx:
        click.echo(
            f"{t['transid']:12} {t['count']:>7} {t['abends']:>7} {t['retries']:>7}  "
            f"{_fmt(t['start_latency_ms']):>22}  {_fmt(t['response_ms']):>24}"
        )


def register(cli: click.Group) -> None:
    cli.add_command(stats)
