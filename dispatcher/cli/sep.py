"""``dispatcher sep``: start, list, stop, pause and resume SEPs."""

from __future__ import annotations

import click


@click.group("sep")
def sep() -> None:
    """SEPs: the processes that run tasks."""


def register(cli: click.Group) -> None:
    cli.add_command(sep)
