"""The ``dispatcher`` command line: the only place that knows every part.

Each command group lives in a module of its own in this package; this module
builds the root group and registers them.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import psycopg

from ..config import CONFIG_ENV, load_settings
from ..errors import DispatcherError
from . import (
    config,
    db,
    http,
    listener,
    region,
    requests,
    sep,
    stats,
    status,
    timers,
    tx,
    up,
    web,
)
from ._app import App, pass_app

__all__ = ["App", "cli", "main", "pass_app"]


class Failure(click.ClickException):
    """An error for the user: one line on stderr, exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {' '.join(self.message.split())}", err=True)  # one line


def _failure(exc: BaseException) -> Failure | None:
    from sep.program import AppError

    # Alembic and SQLAlchemy are imported only by the commands that migrate: their
    # errors can only come when they were
    alembic_exc = sys.modules.get("alembic.util.exc")
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if isinstance(exc, DispatcherError | AppError):
        return Failure(str(exc))
    if type(exc) is click.ClickException:  # a command's own refusal (not a usage error)
        return Failure(exc.format_message())
    if alembic_exc is not None and isinstance(exc, alembic_exc.CommandError):
        return Failure(f"migration: {exc}")  # e.g. db upgrade to a revision that is not
    if isinstance(exc, psycopg.OperationalError):
        return Failure(f"database unavailable: {str(exc).strip()}")
    if sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.OperationalError):
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
    "--config",
    "config_path",
    default=None,
    metavar="PATH",
    help="The configuration file [env DISPATCHER_CONFIG; default: "
    "$DISPATCHER_HOME/dispatcher.toml if it exists]. See: dispatcher config show.",
)
@click.option(
    "--region",
    "region_name",
    default=None,
    callback=lambda _ctx, _param, value: _region_name(value),
    help="Region to act on [env DISPATCHER_REGION; file: region; default: default].",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log lines as key=value text or JSON [env DISPATCHER_LOG_FORMAT; file: log_format; "
    "default: text].",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default=None,
    help="[env DISPATCHER_LOG_LEVEL; file: log_level; default: info]",
)
@click.version_option(package_name="dispatcher")
@click.pass_context
def cli(
    ctx: click.Context,
    config_path: str | None,
    region_name: str | None,
    log_format: str | None,
    log_level: str | None,
) -> None:
    """A transaction dispatcher whose scheduling brain is PostgreSQL.

    With no configuration every command uses an embedded PostgreSQL kept in
    $DISPATCHER_HOME (default ~/.dispatcher); DISPATCHER_DATABASE_URL points
    everything at an existing server instead. Settings come from flags, then the
    environment, then dispatcher.toml, then defaults (docs/config.md).
    """
    from ..logs import configure_logging
    from ..processes import die_with_parent

    # flags > environment > file > defaults; a bad file stops here (exit 2): nothing
    # is started
    flags = {"region": region_name, "log_format": log_format, "log_level": log_level}
    settings = load_settings(flags, config=config_path)
    if config_path is not None and settings.config_file is not None:
        _export_config(ctx, settings.config_file)
    configure_logging(settings.log_format, settings.log_level)
    die_with_parent()  # a listener, monitor or supervisor started by `up` ends with it
    ctx.obj = App(settings)
    ctx.call_on_close(ctx.obj.close)


def _export_config(ctx: click.Context, path: Path) -> None:
    """The processes this command starts (SEPs, `up`'s children) read the same file;
    the variable is restored when the command ends (CliRunner runs in one process)."""
    before = os.environ.get(CONFIG_ENV)
    os.environ[CONFIG_ENV] = str(path.absolute())

    def restore() -> None:
        if before is None:
            os.environ.pop(CONFIG_ENV, None)
        else:
            os.environ[CONFIG_ENV] = before

    ctx.call_on_close(restore)


for _module in (
    db,
    region,
    tx,
    sep,
    listener,
    http,
    web,
    requests,
    timers,
    status,
    stats,
    up,
    config,
):
    _module.register(cli)


def _json_errors() -> bool:
    """Are log lines JSON (--log-format json, or its variable or file setting, which
    configure_logging put in the environment)? Then so is the last line of a command
    that fails: every line of stderr is one JSON object (docs/operations.md)."""
    if os.environ.get("DISPATCHER_LOG_FORMAT") == "json":
        return True
    argv = sys.argv[1:]
    return "--log-format=json" in argv or any(
        a == "--log-format" and b == "json" for a, b in itertools.pairwise(argv)
    )


def _fail(message: str, code: int, event: str = "command_failed", **more: Any) -> NoReturn:
    """End the command with MESSAGE (one line: "error: ...", or a JSON event)."""
    text = " ".join(message.split())
    if _json_errors():
        line = {
            "timestamp": datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"),
            "level": "error",
            "event": event,
            "error": text,
            "exit_code": code,
            **more,
        }
        click.echo(json.dumps(line, default=str), err=True)
    else:
        click.echo(f"error: {text}", err=True)
    sys.exit(code)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        if _json_errors():
            _fail("aborted", 130, "command_aborted")
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        if not _json_errors():
            exc.show()
            sys.exit(exc.exit_code)
        usage = exc.ctx.get_usage() if exc.ctx is not None else None
        _fail(exc.format_message(), exc.exit_code, "usage_error", usage=usage)
    except click.ClickException as exc:
        if not _json_errors():
            exc.show()
            sys.exit(exc.exit_code)
        _fail(exc.format_message(), exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # never a traceback for an operator (unless asked for)
        failure = _failure(exc)
        if failure is not None:
            _fail(failure.message, 1)
        if os.environ.get("DISPATCHER_DEBUG"):
            raise
        text = " ".join(str(exc).split())
        if isinstance(exc, OSError | ValueError) and text:
            # the system's or a value's own word (an address in use, a host unknown...)
            _fail(text, 1)
        _fail(
            f"unexpected {type(exc).__name__}: {text} (DISPATCHER_DEBUG=1 shows the traceback)",
            1,
        )
