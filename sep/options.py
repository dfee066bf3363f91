"""The options of a SEP, defined once.

``OPTIONS`` lists them (flag, SEPConfig field, help, type and bounds; the default is
the field's default in ``SEPConfig``). Everything else is derived from that list:

- ``click_options()``: the click options of ``dispatcher sep start`` and of
  ``python -m sep`` (and of ``dispatcher up --batch``); the command gets their values
  as one ``sep_options`` argument, a dict of SEPConfig fields for ``make_config``;
- ``argv(config)``: a SEPConfig rendered back to options (what a supervisor passes
  to its SEP processes, what ``up`` passes to ``dispatcher sep start``);
- ``parse(args, url, region)``: options to a SEPConfig; ``parse(argv(c), c.url,
  c.region) == c`` for any valid config.

The database URL and the region are not options: they come from the environment.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeVar, cast

import click

from dispatcher.seconds import Seconds

__all__ = [
    "OPTIONS",
    "Option",
    "SEPConfig",
    "Seconds",
    "argv",
    "click_options",
    "make_config",
    "parse",
]

R = TypeVar("R")


@dataclass
class SEPConfig:
    url: str
    region: str
    app: str | None = None
    capabilities: tuple[str, ...] = ()
    standby: bool = False
    poll_interval: float = 1.0
    async_commit: bool = False
    heartbeat_interval: float = 2.0
    reap_every: int = 5
    batch: int = 1  # requests taken per call (sep/batch.py); 1: no batching
    batch_window: float = 0.005  # s an outcome may wait in a batch before it is reported


Kind = Literal["text", "flag", "multiple", "int", "seconds"]
_FIELDS = {f.name: f for f in dataclasses.fields(SEPConfig)}


@dataclass(frozen=True)
class Option:
    """One SEP option: FLAG on the command line, FIELD of SEPConfig."""

    flag: str
    field: str
    help: str
    kind: Kind
    low: float = 0
    high: float = 0
    unit: str = "seconds"
    scale: int = 1  # command-line units per SEPConfig unit (ms per s: 1000)

    @property
    def param(self) -> str:
        """Its name among a command's parameters (clear of the command's own)."""
        return f"sep_{self.field}"

    @property
    def config_default(self) -> Any:
        return _FIELDS[self.field].default

    @property
    def default(self) -> Any:
        """The default on the command line."""
        value = self.config_default
        return float(_unscale(value, self.scale)) if self.kind == "seconds" else value

    def to_config(self, value: Any) -> Any:
        """A value from the command line as SEPConfig holds it."""
        return tuple(value) if self.kind == "multiple" else value

    def render(self, value: Any) -> list[str]:
        """VALUE (of SEPConfig) as command-line arguments; none for the default."""
        if value == self.config_default:
            return []
        if self.kind == "flag":
            return [self.flag] if value else []
        if self.kind == "multiple":
            return [f"{self.flag}={v}" for v in value]
        if self.kind == "seconds":
            return [f"{self.flag}={_unscale(float(value), self.scale)}"]
        return [f"{self.flag}={value}"]

    def click_option(self, required: bool = False) -> Callable[[Callable[..., R]], Any]:
        kw: dict[str, Any] = {"help": self.help}
        if self.kind == "text":
            kw.update(required=required)
        elif self.kind == "flag":
            kw.update(is_flag=True)
        elif self.kind == "multiple":
            kw.update(multiple=True)
        elif self.kind == "int":
            kw.update(type=click.IntRange(int(self.low), int(self.high)))
        else:
            kw.update(
                type=Seconds(self.low, self.high, unit=self.unit, scale=self.scale),
                metavar="MS" if self.unit == "ms" else "SECONDS",
            )
        if self.kind in ("int", "seconds"):
            kw.update(default=self.default, show_default=True)
        return click.option(self.flag, self.param, **kw)


def _unscale(value: float, scale: int) -> str:
    """VALUE (s) in units of 1/SCALE s as Seconds reads it back exactly: 0.0071 s is
    "7.1" ms."""
    if scale == 1:
        return repr(value)
    return format((Decimal(repr(value)) * scale).normalize(), "f")


OPTIONS: tuple[Option, ...] = (
    Option("--app", "app", "Module whose @program functions run.", "text"),
    Option("--capability", "capabilities", "Capability (repeatable).", "multiple"),
    Option(
        "--standby",
        "standby",
        "Start even when the region is full; take a slot when one frees.",
        "flag",
    ),
    Option(
        "--poll",
        "poll_interval",
        "Safety poll interval of idle SEPs (s).",
        "seconds",
        low=0.01,
        high=3600,
    ),
    Option(
        "--heartbeat",
        "heartbeat_interval",
        "Heartbeat interval (s).",
        "seconds",
        low=0.01,
        high=3600,
    ),
    Option(
        "--async-commit",
        "async_commit",
        "Completions do not wait for the WAL flush: faster; a crash of PostgreSQL may run "
        "the last tasks again (see docs/sep.md).",
        "flag",
    ),
    Option(
        "--batch",
        "batch",
        "Requests each SEP takes per call; above 1 the outcomes of tasks that do not use "
        "ctx.db are reported together (faster; see docs/sep.md, Batches).",
        "int",
        low=1,
        high=1000,
    ),
    Option(
        "--batch-window",
        "batch_window",
        "With --batch: the longest an outcome waits to be reported (ms).",
        "seconds",
        low=0,
        high=60_000,
        unit="ms",
        scale=1000,
    ),
)


def click_options(
    *flags: str, app_required: bool = False
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorator: the click options of the SEP (those named by FLAGS, else all); the
    command gets their values as ``sep_options``, a dict of SEPConfig fields."""
    unknown = set(flags) - {o.flag for o in OPTIONS}
    if unknown:
        raise ValueError(f"no SEP option {sorted(unknown)}")
    chosen = [o for o in OPTIONS if not flags or o.flag in flags]

    def decorate(f: Callable[..., R]) -> Callable[..., R]:
        @functools.wraps(f)
        def command(*args: Any, **kwargs: Any) -> R:
            values = {o.field: o.to_config(kwargs.pop(o.param)) for o in chosen}
            return f(*args, sep_options=values, **kwargs)

        decorated: Any = command
        for o in reversed(chosen):
            decorated = o.click_option(required=app_required and o.field == "app")(decorated)
        return cast(Callable[..., R], decorated)

    return decorate


def make_config(url: str, region: str, sep_options: Mapping[str, Any]) -> SEPConfig:
    """The SEPConfig of the options a command got (see click_options)."""
    return SEPConfig(url=url, region=region, **sep_options)


def argv(config: SEPConfig) -> list[str]:
    """CONFIG as the options of ``python -m sep`` or ``dispatcher sep start`` (those at
    their default left out; URL and region are not options)."""
    return [arg for o in OPTIONS for arg in o.render(getattr(config, o.field))]


def parse(args: Sequence[str], url: str, region: str) -> SEPConfig:
    """The SEPConfig of command-line ARGS (click.UsageError when they are wrong)."""

    @click.command()
    @click_options()
    def read(sep_options: dict[str, Any]) -> SEPConfig:
        return make_config(url, region, sep_options)

    return cast(SEPConfig, read.main(list(args), "sep", standalone_mode=False))
