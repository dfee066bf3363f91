"""``Seconds``: the command-line type of every duration option (the CLI's and a SEP's).

click.FloatRange lets "nan" and "inf" through; this type takes only a finite number in
its bounds, and says so in one wording everywhere.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation

import click

__all__ = ["Seconds"]


class Seconds(click.ParamType[float]):
    """A finite number of seconds (or of UNIT) in [LOW, HIGH] ((LOW, HIGH] with
    LOW_OPEN); the value is divided by SCALE (ms to s: 1000) exactly as written
    ("7.1" ms: 0.0071 s)."""

    name = "seconds"

    def __init__(
        self,
        low: float,
        high: float,
        *,
        low_open: bool = False,
        unit: str = "seconds",
        scale: int = 1,
    ) -> None:
        self.low, self.high, self.low_open = low, high, low_open
        self.unit, self.scale = unit, scale

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            f = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of {self.unit}", param, ctx)
        below = f <= self.low if self.low_open else f < self.low
        if not math.isfinite(f) or below or f > self.high:
            low, high = f"{self.low:.10g}", f"{self.high:.10g}"
            span = f"more than {low} and at most {high}" if self.low_open else f"{low} to {high}"
            self.fail(f"must be {span} {self.unit}, not {value}", param, ctx)
        if self.scale == 1:
            return f
        try:
            exact = Decimal(value.strip()) if isinstance(value, str) else Decimal(f)
        except InvalidOperation:
            exact = Decimal(f)
        return float(exact / self.scale)
