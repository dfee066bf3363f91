"""What every command needs: settings, a database URL, a connection, the region."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click
import psycopg

from ..config import DEFAULT_REGION, Settings, load_settings
from ..database import connect, database_url
from ..errors import InvalidValue
from ..gateway import RegionGateway, ops
from ..migrate import ensure_schema
from ..values import row_json_default

if TYPE_CHECKING:
    from ..roles import ProcessKind

__all__ = ["App", "echo_json", "json_text", "pass_app", "say"]


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._url: str | None = None
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._checked = False

    @classmethod
    def from_env(cls, region: str | None = None) -> App:
        """The settings of the environment and the configuration file, REGION (a flag)
        first."""
        return cls(load_settings({"region": region}))

    @property
    def url(self) -> str:
        if self._url is None:
            self._url = database_url(self.settings)
        return self._url

    @property
    def conn(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None:
            self._conn = connect(self.url, application_name="dispatcher-cli")
        return self._conn

    def db(self, ensure: bool = False) -> RegionGateway:
        """The gateway to the region's database, migrating an empty database first (a
        fresh home just works); ENSURE (or the default region): create the region if
        needed, else UnknownRegion, with the command that creates it."""
        if not self._checked:
            ensure_schema(self.url)
            self._checked = True
        gw = RegionGateway(self.conn, self.settings.region)
        if ensure or self.settings.region == DEFAULT_REGION:
            gw.run(ops.region.ensure_region(gw.name))
        else:
            gw.run(ops.region.get_region(gw.name))
        return gw

    def process_url(self, kind: ProcessKind) -> str:
        """The URL a process of KIND connects with: its own, or the region's with its
        role (dispatcher/roles.py)."""
        from ..config import ConfigError
        from ..errors import DatabaseUnavailable
        from ..roles import process_url

        url = process_url(self.settings, kind, self.url, self.db())
        if url != self.url:  # its own login, or a role: refuse at once what cannot connect
            try:
                connect(url, application_name="dispatcher-cli").close()
            except (DatabaseUnavailable, psycopg.Error) as exc:
                what = " ".join(str(exc).split())
                msg = f"the {kind} process's database URL cannot connect: {what}"
                raise ConfigError(msg) from None
        return url

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def reset(self) -> None:
        """Forget the connection and the URL: the next use finds the database again
        (and starts the embedded server again, if it died)."""
        try:
            self.close()
        except psycopg.Error:
            self._conn = None
        self._url = None
        self._checked = False


pass_app = click.make_pass_decorator(App)


def say(app: App, text: str, event: str, **fields: Any) -> None:
    """A line for the operator on stderr (where to connect, what was synced): TEXT as it
    is, or with --log-format json one log event EVENT with FIELDS, so that every line
    of stderr is then one JSON object."""
    if app.settings.log_format == "json":
        from ..logs import get_logger

        get_logger("cli").info(event, **fields)
    else:
        click.echo(text, err=True)


def json_text(value: Any, **options: Any) -> str:
    """VALUE as JSON text for a terminal: accents and emoji as they are (a lone
    surrogate, which UTF-8 cannot carry, as its escape)."""
    text = json.dumps(value, default=row_json_default, ensure_ascii=False, **options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, default=row_json_default, **options)
    return text


def echo_json(value: Any) -> None:
    click.echo(json_text(value, indent=2, sort_keys=True))


F = TypeVar("F", bound=Callable[..., Any])


def values_are_usage_errors(command: F) -> F:
    """For a command whose every value is the operator's argument or option: a value
    the region refuses (InvalidValue: a malformed name, a number out of range) is a
    usage error (exit 2, click's usage line), like a value click itself refuses."""

    @functools.wraps(command)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except InvalidValue as exc:
            raise click.UsageError(exc.message) from None

    return checked  # type: ignore[return-value]
