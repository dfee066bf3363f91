"""A request's data as the commands take it: JSON text, ``@FILE`` or ``-`` (stdin).

The same limits as the listener's (dispatcher.values): a value the region would refuse
is a one-line usage error here, before anything is sent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..channel import ChannelError, parse_json
from ..errors import InvalidValue
from ..values import MAX_DATA, check_data

__all__ = ["DATA_HELP", "parse_data", "read_data"]

DATA_HELP = "The request's data as JSON; @FILE reads it from FILE, - from standard input."


def read_data(text: str, what: str = "--data") -> Any:
    """The value of a --data option: JSON text, @FILE or - (standard input)."""
    if text == "-":
        raw = sys.stdin.buffer.read(MAX_DATA + 1)
        return parse_data(raw, f"{what} (standard input)")
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_DATA + 1)
        except OSError as exc:
            raise click.BadParameter(f"cannot read {path}: {exc.strerror}") from None
        return parse_data(raw, f"{what} ({path})")
    return parse_data(text.encode("utf-8", "surrogatepass"), what)


def parse_data(raw: bytes, what: str) -> Any:
    """RAW parsed as JSON and checked against the region's limits; BadParameter if not."""
    if len(raw) > MAX_DATA:
        raise click.BadParameter(f"{what} is over the limit of {MAX_DATA:,} bytes")
    try:
        value = parse_json(raw)
    except ChannelError as exc:
        raise click.BadParameter(f"{what} is not valid JSON: {exc}") from None
    try:
        check_data(value, what)
    except InvalidValue as exc:
        raise click.BadParameter(exc.message) from None
    return value
