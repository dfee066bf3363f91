"""Where the dispatcher finds its database, which region it serves, and how it runs.

Every setting comes from four layers; the first that has it wins:

1. a command-line flag (``--region``, ``--log-format``, ``--log-level``; the CLI passes
   them as ``flags``);
2. the environment (``DISPATCHER_REGION``, ``DISPATCHER_LISTENER_PORT``...: the key,
   dots as ``_``, upper case, prefixed ``DISPATCHER_``; an empty variable is unset);
3. the TOML file ``dispatcher.toml``: ``--config PATH``, else ``DISPATCHER_CONFIG``,
   else ``$DISPATCHER_HOME/dispatcher.toml`` when it exists (none: fine);
4. the defaults of :class:`DispatcherConfig`.

The schema, its bounds and its types are :class:`DispatcherConfig` (pydantic-settings);
each layer is validated on its own (the file strictly: ``port = "80"`` is a mistake),
so that a bad value is reported as one line naming the key and where it came from
(:class:`ConfigError`, exit code 2). :func:`load_settings` returns the effective
:class:`Settings` with the origin of each value (``dispatcher config show``).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .protocol import DEFAULT_PORT

__all__ = [
    "CONFIG_ENV",
    "CONFIG_NAME",
    "DEFAULT_APP",
    "DEFAULT_HOME",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_REGION",
    "DEFAULT_WEB_PORT",
    "HOME_ENV",
    "KEYS",
    "ConfigError",
    "ConfigSchema",
    "DispatcherConfig",
    "HttpTable",
    "ListenerTable",
    "Origin",
    "Settings",
    "UpTable",
    "WebTable",
    "env_var",
    "load_settings",
    "masked_url",
]

DEFAULT_REGION = "default"
DEFAULT_HOME = Path("~/.dispatcher")
DEFAULT_APP = "dispatcher_examples.sample"  # examples/sample.py (a name, not an import)
DEFAULT_HTTP_PORT = 7380
DEFAULT_WEB_PORT = 7390
CONFIG_NAME = "dispatcher.toml"
CONFIG_ENV = "DISPATCHER_CONFIG"
HOME_ENV = "DISPATCHER_HOME"
ENV_PREFIX = "DISPATCHER_"

REGION_PATTERN = r"^[A-Za-z0-9_.-]{1,40}$"
_PASSWORD = re.compile(r"(://[^:/?#@]*:)[^@/?#]+@|(password\s*=\s*)('[^']*'|\S+)")


def masked_url(url: str) -> str:
    """URL with its password hidden (``postgresql://u:***@h/d``, ``password=***``)."""
    return _PASSWORD.sub(lambda m: f"{m[1]}***@" if m[1] else f"{m[2]}***", url)


class ConfigError(click.ClickException):
    """A configuration that cannot be used: one line on stderr, exit code 2 (also in
    ``python -m sep``, which shows click's exceptions)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {' '.join(self.message.split())}", err=True)


RegionName = Annotated[str, Field(pattern=REGION_PATTERN)]
Text = Annotated[str, Field(min_length=1, max_length=2000)]
Host = Annotated[str, Field(min_length=1, max_length=255)]
Port = Annotated[int, Field(ge=1, le=65535)]
Count = Annotated[int, Field(ge=1, le=1000)]
LogFormat = Literal["text", "json"]
DatabaseRoles = Literal["auto", "on", "off"]
LogLevel = Literal["debug", "info", "warning", "error"]


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenerTable(_Table):
    """``[listener]``: where ``dispatcher listener`` (and the listener of ``up``) listens."""

    host: Host = "127.0.0.1"
    port: Port = DEFAULT_PORT
    # sessions one listener serves at once (None: no limit); a hello past it is refused
    max_sessions: Annotated[int, Field(ge=1, le=1_000_000)] | None = None


class HttpTable(_Table):
    """``[http]``: where the HTTP front listens."""

    host: Host = "127.0.0.1"
    port: Port = DEFAULT_HTTP_PORT


class WebTable(_Table):
    """``[web]``: where the status page (``dispatcher web``, and that of ``up``) listens."""

    host: Host = "127.0.0.1"
    port: Port = DEFAULT_WEB_PORT


class UpTable(_Table):
    """``[up]``: what ``dispatcher up`` runs."""

    app: Text = DEFAULT_APP
    seps: Count | None = None  # None: one per core, at least 2
    batch: Count = 1
    listeners: Annotated[int, Field(ge=1, le=64)] = 1


class ConfigSchema(BaseModel):
    """The keys of ``dispatcher.toml`` (and of the environment), their types, bounds and
    defaults; validates the file strictly (see DispatcherConfig)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: RegionName = DEFAULT_REGION
    database_url: Text | None = None
    cross_region_url: Text | None = None
    # the region's processes work with their kind's role (sql/schema/080_operations.sql):
    # auto: when the login may take it; on: always (else a process refuses to start); off
    database_roles: DatabaseRoles = "auto"
    listener_database_url: Text | None = None
    sep_database_url: Text | None = None
    monitor_database_url: Text | None = None
    log_format: LogFormat = "text"
    log_level: LogLevel = "info"
    listener: ListenerTable = ListenerTable()
    http: HttpTable = HttpTable()
    web: WebTable = WebTable()
    up: UpTable = UpTable()


class DispatcherConfig(ConfigSchema, BaseSettings):
    """The settings of pydantic-settings (the schema of ConfigSchema). load_settings reads
    the layers itself, to know where each value came from, and validates the merged
    values here (a BaseSettings ignores ``strict``: the file is checked by ConfigSchema)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True, env_prefix=ENV_PREFIX)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the layers are merged by load_settings, which records their origins
        return (init_settings,)


def _keys() -> tuple[str, ...]:
    keys: list[str] = []
    for name, info in DispatcherConfig.model_fields.items():
        table = info.annotation
        if isinstance(table, type) and issubclass(table, _Table):
            keys.extend(f"{name}.{sub}" for sub in table.model_fields)
        else:
            keys.append(name)
    return tuple(keys)


KEYS: tuple[str, ...] = _keys()
"""Every setting, as a dotted key of dispatcher.toml (``listener.port``)."""


def env_var(key: str) -> str:
    """The environment variable of KEY: ``listener.port`` -> ``DISPATCHER_LISTENER_PORT``."""
    return ENV_PREFIX + key.replace(".", "_").upper()


@dataclass(frozen=True)
class Origin:
    """Where a value came from: ``flag`` (NAME: --region), ``env`` (NAME: the variable),
    ``file`` (NAME: its path) or ``default`` (no name)."""

    source: Literal["flag", "env", "file", "default"]
    name: str | None = None

    def __str__(self) -> str:
        return self.source if self.name is None else f"{self.source} {self.name}"


DEFAULT = Origin("default")


@dataclass(frozen=True)
class Settings:
    """Configuration shared by every process of a region.

    - ``home``: ``DISPATCHER_HOME`` (default ``~/.dispatcher``); the embedded
      PostgreSQL keeps its data in ``home/pgdata``; ``home/dispatcher.toml`` is the
      configuration file when neither ``--config`` nor ``DISPATCHER_CONFIG`` names one.
    - ``database_url``: ``database_url``; when set, the embedded server is not used.
    - ``region``: ``region`` (default ``default``).
    - ``cross_region_url``: ``cross_region_url``; timers live there when set, else in
      the region database.
    - ``database_roles`` (auto, on, off) and ``listener_database_url``,
      ``sep_database_url``, ``monitor_database_url``: the database role each kind of
      process works with (dispatcher/roles.py).
    - ``log_format``, ``log_level``, ``listener``, ``http``, ``web``, ``up``: see
      :class:`DispatcherConfig`.
    - ``config_file``: the file read, if any; ``origins``: where each key's value came
      from (see :func:`load_settings`).
    """

    home: Path
    database_url: str | None
    region: str
    cross_region_url: str | None = None
    database_roles: str = "auto"
    listener_database_url: str | None = None
    sep_database_url: str | None = None
    monitor_database_url: str | None = None
    log_format: str = "text"
    log_level: str = "info"
    listener: ListenerTable = field(default_factory=ListenerTable)
    http: HttpTable = field(default_factory=HttpTable)
    web: WebTable = field(default_factory=WebTable)
    up: UpTable = field(default_factory=UpTable)
    config_file: Path | None = None
    origins: Mapping[str, Origin] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings of a process without flags: environment > file > defaults (the
        file of DISPATCHER_CONFIG or DISPATCHER_HOME). ConfigError when they are wrong."""
        return load_settings(env=env)

    def with_region(self, region: str | None) -> Settings:
        if not region:
            return self
        return replace(
            self, region=region, origins={**self.origins, "region": Origin("flag", "--region")}
        )

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    def value(self, key: str) -> Any:
        """The effective value of a dotted KEY (``up.seps``)."""
        target: Any = self
        for part in key.split("."):
            target = getattr(target, part)
        return target

    def origin(self, key: str) -> Origin:
        return self.origins.get(key, DEFAULT)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config: str | os.PathLike[str] | None = None,
) -> Settings:
    """The effective settings: FLAGS (dotted key -> value; None: not given) > ENV
    (default: os.environ) > the file (CONFIG, the value of ``--config``, else
    DISPATCHER_CONFIG, else ``$DISPATCHER_HOME/dispatcher.toml`` if it exists) >
    defaults. Raises ConfigError (one line naming the key and the file or variable)."""
    e: Mapping[str, str] = os.environ if env is None else env
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    unknown = set(given) - set(KEYS)
    if unknown:
        raise ValueError(f"no setting {sorted(unknown)}")
    home = Path(e.get(HOME_ENV) or DEFAULT_HOME).expanduser()
    path = _find_file(config, e, home)
    file_origin = Origin("file", str(path))
    layers: list[tuple[dict[str, Any], Callable[[str], Origin]]] = [
        (given, lambda key: Origin("flag", "--" + key.replace("_", "-"))),
        (_env_layer(e), lambda key: Origin("env", env_var(key))),
        (_file_layer(path) if path is not None else {}, lambda _key: file_origin),
    ]
    origins: dict[str, Origin] = {}
    merged: dict[str, Any] = {}
    for key in KEYS:
        for values, origin in layers:
            if key in values:
                merged[key] = values[key]
                origins[key] = origin(key)
                break
        else:
            origins[key] = DEFAULT
    try:
        cfg = DispatcherConfig.model_validate(_nest(merged))
    except ValidationError as exc:  # a flag the CLI did not check as strictly
        err = exc.errors()[0]
        key = _key(err)
        raise ConfigError(f"{origins.get(key, DEFAULT).name or key}: {_message(err)}") from None
    origins["home"] = Origin("env", HOME_ENV) if e.get(HOME_ENV) else DEFAULT
    return Settings(
        home=home,
        database_url=cfg.database_url,
        region=cfg.region,
        cross_region_url=cfg.cross_region_url,
        database_roles=cfg.database_roles,
        listener_database_url=cfg.listener_database_url,
        sep_database_url=cfg.sep_database_url,
        monitor_database_url=cfg.monitor_database_url,
        log_format=cfg.log_format,
        log_level=cfg.log_level,
        listener=cfg.listener,
        http=cfg.http,
        web=cfg.web,
        up=cfg.up,
        config_file=path,
        origins=origins,
    )


def _find_file(
    config: str | os.PathLike[str] | None, env: Mapping[str, str], home: Path
) -> Path | None:
    named = [("--config", config), (CONFIG_ENV, env.get(CONFIG_ENV) or None)]
    for name, value in named:
        if value is None:
            continue
        path = Path(value).expanduser()
        if not str(value).strip():
            raise ConfigError(f"{name}: an empty path")
        if not path.exists():
            raise ConfigError(f"{name}: {path}: no such file")
        return path
    default = home / CONFIG_NAME
    return default if default.exists() else None


def _file_layer(path: Path) -> dict[str, Any]:
    """The values of the file at PATH, by dotted key, checked strictly (TOML has types)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        ConfigSchema.model_validate(data, strict=True)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{path}: {_key(err)}: {_message(err)}") from None
    return _flatten(data)


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    """The values of the environment, by dotted key (strings, converted as pydantic
    does: DISPATCHER_UP_SEPS=4 is 4)."""
    values = {key: env[env_var(key)] for key in KEYS if env.get(env_var(key))}
    try:
        DispatcherConfig.model_validate(_nest(values))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{env_var(_key(err))}: {_message(err)}") from None
    return values


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            flat.update({f"{name}.{k}": v for k, v in value.items()})
        else:
            flat[name] = value
    return flat


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        table, dot, sub = key.partition(".")
        if dot:
            nested.setdefault(table, {})[sub] = value
        else:
            nested[key] = value
    return nested


def _key(err: ErrorDetails) -> str:
    return ".".join(str(part) for part in err["loc"])


def _shown(value: Any) -> str:
    """VALUE as it is written in TOML (a string in quotes)."""
    if isinstance(value, dict):
        return "a table"
    try:
        return json.dumps(value, ensure_ascii=False)[:80]
    except (TypeError, ValueError):
        return repr(value)[:80]


def _message(err: ErrorDetails) -> str:
    """ERR of pydantic as words for an operator: ``must be 1..1000, not 0``."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err["input"]
    bounds = _bounds(err)
    if kind == "extra_forbidden":
        return "unknown table" if isinstance(value, dict) else "unknown key"
    if kind in ("greater_than_equal", "less_than_equal") and bounds:
        return f"must be {bounds[0]}..{bounds[1]}, not {_shown(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, not {_shown(value)}"
    if kind in ("string_type", "string_sub_type"):
        return f"must be a string, not {_shown(value)}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a table, not {_shown(value)}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '?')}, not {_shown(value)}"
    if kind == "string_pattern_mismatch" and err["loc"] == ("region",):
        return f"must be 1-40 letters, digits or _.-, not {_shown(value)}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    return f"{err['msg'][:1].lower()}{err['msg'][1:]}, not {_shown(value)}"


def _bounds(err: ErrorDetails) -> tuple[int, int] | None:
    """The (low, high) bounds of the integer at ERR's location, from the schema."""
    model: Any = ConfigSchema
    info = None
    for part in err["loc"]:
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return None
        model = info.annotation
    if info is None:
        return None
    ge = le = None
    for meta in _metadata(info.metadata, info.annotation):
        ge = getattr(meta, "ge", ge)
        le = getattr(meta, "le", le)
    return None if ge is None or le is None else (int(ge), int(le))


def _metadata(metadata: list[Any], annotation: Any) -> Iterator[Any]:
    """The constraints of a field (an optional one keeps them in its union's argument)."""
    yield from metadata
    for arg in getattr(annotation, "__args__", ()):
        for meta in getattr(arg, "__metadata__", ()):
            yield meta
            yield from getattr(meta, "metadata", ())
