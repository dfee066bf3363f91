"""``dispatcher config show``: every effective setting and where it came from."""

from __future__ import annotations

from typing import Any

import click

from ..config import HOME_ENV, KEYS, Settings, masked_url
from ._app import App, echo_json, pass_app


def _masked(key: str, value: Any) -> Any:
    """VALUE, with the password of a database URL hidden."""
    if key.endswith("_url") and isinstance(value, str):
        return masked_url(value)
    return value


def rows(settings: Settings) -> list[dict[str, Any]]:
    """One row per setting: key, value, source (flag, env, file, default) and its name
    (the flag, the variable, the file; none for a default)."""
    out = []
    home = settings.origin("home")
    out.append(
        {"key": "home", "value": str(settings.home), "source": home.source, "name": home.name}
    )
    for key in KEYS:
        origin = settings.origin(key)
        value = _masked(key, settings.value(key))
        out.append({"key": key, "value": value, "source": origin.source, "name": origin.name})
    return out


@click.group("config")
def config() -> None:
    """The configuration: flags > environment > dispatcher.toml > defaults (docs/config.md)."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="As JSON: {file, settings: [...]}.")
@pass_app
def show(app: App, as_json: bool) -> None:
    """Print each effective setting and where it came from: flag NAME, env VARIABLE,
    file PATH or default (passwords in URLs are masked)."""
    settings = app.settings
    table = rows(settings)
    file = None if settings.config_file is None else str(settings.config_file)
    if as_json:
        echo_json({"file": file, "settings": table})
        return
    click.echo(f"# file: {file or f'none ({HOME_ENV}/dispatcher.toml does not exist)'}")
    width = max(len(r["key"]) for r in table)
    shown = [
        ("-" if r["value"] is None else str(r["value"]), r["source"], r["name"]) for r in table
    ]
    vwidth = min(48, max(len(v) for v, _, _ in shown))
    for r, (value, source, name) in zip(table, shown, strict=True):
        where = source if name is None else f"{source} {name}"
        click.echo(f"{r['key']:<{width}}  {value:<{vwidth}}  {where}")


def register(cli: click.Group) -> None:
    cli.add_command(config)
