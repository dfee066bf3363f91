"""The ``dispatcher`` command line: the only place that knows every part.

Each command group lives in a module of its own in this package; this module
builds the root group and registers them.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

import click
import psycopg
import sqlalchemy.exc

from ..errors import DispatcherError
from . import db, listener, region, requests, sep, stats, status, timers, tx, up
from ._app import App, pass_app

__all__ = ["App", "cli", "main", "pass_app"]


class Failure(click.ClickException):
    """An error for the user: one line on stderr, exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {' '.join(self.message.split())}", err=True)  # one line


def _failure(exc: BaseException) -> Failure | None:
    from alembic.util.exc import CommandError

    from sep.program import AppError

    if isinstance(exc, DispatcherError | AppError):
        return Failure(str(exc))
    if isinstance(exc, CommandError):  # e.g. db upgrade to a revision that does not exist
        return Failure(f"migration: {exc}")
    if isinstance(exc, psycopg.OperationalError):
        return Failure(f"database unavailable: {str(exc).strip()}")
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        return Failure(f"database unavailable: {str(exc.orig).strip()}")
    if isinstance(
        exc,
        psycopg.errors.UndefinedFunction
        | psycopg.errors.UndefinedTable
        | psycopg.errors.UndefinedColumn
        | psycopg.errors.InvalidSchemaName,
    ):
        return Failure(
            f"the database refused: {str(exc).strip()} "
            "(hint: is it migrated? run: dispatcher db upgrade)"
        )
    if isinstance(exc, psycopg.Error):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Failure(f"the database refused: {first}")
    return None


_REGION_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


def _region_name(value: str | None) -> str | None:
    if value is not None and not _REGION_NAME.match(value):
        raise click.BadParameter(
            f"{value[:80]!r} is not a region name: 1-40 letters, digits or _.-",
            param_hint="--region",
        )
    return value


class DispatcherGroup(click.Group):
    """Turns the errors of the dispatcher into one clear line (also under CliRunner)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            failure = _failure(exc)
            if failure is None:
                raise
            raise failure from exc


@click.group(
    cls=DispatcherGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--region",
    "region_name",
    envvar="DISPATCHER_REGION",
    default=None,
    callback=lambda _ctx, _param, value: _region_name(value),
    help="Region to act on [env DISPATCHER_REGION; default: default].",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    envvar="DISPATCHER_LOG_FORMAT",
    default="text",
    show_default=True,
    help="Log lines as key=value text or JSON.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    envvar="DISPATCHER_LOG_LEVEL",
    default="info",
    show_default=True,
)
@click.version_option(package_name="dispatcher")
@click.pass_context
def cli(ctx: click.Context, region_name: str | None, log_format: str, log_level: str) -> None:
    """A transaction dispatcher whose scheduling brain is PostgreSQL.

    With no configuration every command uses an embedded PostgreSQL kept in
    $DISPATCHER_HOME (default ~/.dispatcher); DISPATCHER_DATABASE_URL points
    everything at an existing server instead.
    """
    from ..logs import configure_logging
    from ..processes import die_with_parent

    configure_logging(log_format, log_level)
    die_with_parent()  # a listener, monitor or supervisor started by `up` ends with it
    ctx.obj = App.from_env(region_name)
    ctx.call_on_close(ctx.obj.close)


for _module in (db, region, tx, sep, listener, requests, timers, status, stats, up):
    _module.register(cli)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (DispatcherError, psycopg.Error, sqlalchemy.exc.OperationalError) as exc:
        failure = _failure(exc)
        assert failure is not None
        failure.show()
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # never a traceback for an operator (unless asked for)
        if os.environ.get("DISPATCHER_DEBUG"):
            raise
        text = " ".join(str(exc).split())
        if isinstance(exc, OSError | ValueError) and text:
            # the system's or a value's own word (an address in use, a host unknown...)
            click.echo(f"error: {text}", err=True)
        else:
            click.echo(
                f"error: unexpected {type(exc).__name__}: {text} "
                "(DISPATCHER_DEBUG=1 shows the traceback)",
                err=True,
            )
        sys.exit(1)
