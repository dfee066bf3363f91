"""``dispatcher db``: migrations and the embedded server."""

from __future__ import annotations

import click

from .. import migrate
from ..database import stop_embedded
from ._app import App, pass_app


@click.group("db")
def db() -> None:
    """The region database: migrations, its URL, the embedded server."""


@db.command("upgrade")
@click.argument("revision", default="head")
@pass_app
def upgrade(app: App, revision: str) -> None:
    """Migrate the database up to REVISION (default: head)."""
    migrate.upgrade(app.url, revision)
    click.echo(f"database at revision {migrate.current(app.url)}")
    if app.settings.cross_region_url:
        migrate.install_cross_region(app.settings.cross_region_url)
        click.echo("cross-region database (timers) installed")


@db.command("downgrade")
@click.argument("revision")
@pass_app
def downgrade(app: App, revision: str) -> None:
    """Migrate the database down to REVISION ('base' removes everything)."""
    migrate.downgrade(app.url, revision)
    click.echo(f"database at revision {migrate.current(app.url) or 'base'}")


@db.command("current")
@pass_app
def current(app: App) -> None:
    """Print the database's revision (and the code's head)."""
    rev = migrate.current(app.url)
    head = migrate.head()
    click.echo(f"{rev or 'base'} (head: {head})")


@db.command("url")
@pass_app
def url(app: App) -> None:
    """Print the connection URL: psql "$(dispatcher db url)" works."""
    click.echo(app.url)


@db.command("stop")
@pass_app
def stop(app: App) -> None:
    """Stop the embedded PostgreSQL of this home."""
    if app.settings.database_url:
        raise click.UsageError(
            "DISPATCHER_DATABASE_URL is set: there is no embedded server to stop"
        )
    if stop_embedded(app.settings):
        click.echo(f"stopped the embedded PostgreSQL in {app.settings.pgdata}")
    else:
        click.echo("the embedded PostgreSQL was not running")


def register(cli: click.Group) -> None:
    cli.add_command(db)
